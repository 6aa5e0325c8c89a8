/* simulate: the "simulated" executor, a program of ours (taskexec simulate) that
 * plays an AIOpsLab-like run over the executor protocol, deterministic per seed. */
#ifndef TASKEXEC_SIMULATE_H
#define TASKEXEC_SIMULATE_H

/* simulate_main: reads the task line from stdin, writes protocol lines to stdout.
 * Returns the process exit code. */
int simulate_main(void);

#endif
