/* version: the release of this build. */
#ifndef TASKEXEC_VERSION_H
#define TASKEXEC_VERSION_H

#define TASKEXEC_VERSION "0.1.0"

#endif
