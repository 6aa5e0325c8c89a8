/* uuidgen: random UUIDs in text (libuuid). */
#ifndef TASKEXEC_UUIDGEN_H
#define TASKEXEC_UUIDGEN_H

/* uuidgen: writes a random (version 4) UUID, lower case, into out[37]. */
void uuidgen(char out[37]);

#endif
