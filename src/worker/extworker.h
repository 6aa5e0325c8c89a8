/* extworker: `taskexec worker`, an external worker that speaks the worker routes
 * over HTTP and runs tasks with the same runner as internal workers. */
#ifndef TASKEXEC_EXTWORKER_H
#define TASKEXEC_EXTWORKER_H

/* extworker_main: runs until SIGTERM/SIGINT; returns the process exit code. */
int extworker_main(int argc, char **argv);

#endif
