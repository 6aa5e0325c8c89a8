/* simenv: the interactive mode of the simulated executor: a toy incident (five services
 * of a hotel reservation app, one with an injected fault chosen by the problem id and
 * seed) that answers exec_shell, get_logs, get_metrics, get_traces and submit over the
 * session protocol. A correct submit ("Yes" for detection, the faulty service otherwise)
 * earns reward 1, a wrong one 0; max_steps without a submit ends it with reward 0. */
#ifndef TASKEXEC_SIMENV_H
#define TASKEXEC_SIMENV_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

/* simenv_run: plays the session for task (already read from stdin); reads actions from
 * stdin, writes ready/observation/result lines to stdout. Returns the exit code. */
int simenv_run(json_t *task);

/* Shared by both modes of the simulated executor: a stable hash of a string (never 0),
 * and the AIOpsLab task type a problem id names (detection when it names none). */
uint64_t simenv_hash(const char *s);
/* simenv_emit: one protocol line on stdout, flushed; takes the reference (NULL-safe). */
void simenv_emit(json_t *o);
const char *simenv_task_type(const char *problem_id);

#endif
