/* experiments: an experiment's life (CONTRACT.md "Experiments"), written once for the
 * API and the CLI: create (every slot's task in one transaction), cancel, rerun, and
 * the scoreboard.
 *
 * DESIGN
 * The store keeps experiments and their tasks (each task carries experiment_id and its
 * slot; a rerun adds a task for a slot and makes it the slot's current one). What a
 * researcher reads is computed by the database: counts per state, and per (problem,
 * agent config) the sums the scoreboard needs; this module only divides and formats,
 * so a scoreboard over 100,000 tasks costs one grouped query and memory per row, not
 * per task. */
#ifndef TASKEXEC_EXPERIMENTS_H
#define TASKEXEC_EXPERIMENTS_H

#include "model/experiment.h"
#include "service/queue.h"

#include <jansson.h>
#include <stdbool.h>

/* experiments_create: validates body against the catalog with at most max_tasks tasks,
 * then stores the experiment and all its tasks in one transaction and wakes the
 * workers. *out: the experiment as stored (caller frees). ERR_INVALID: *errors is a new
 * array of {"field","message"} (caller json_decref's); nothing was created. */
int experiments_create(struct queue *q, json_t *body, int max_tasks, struct experiment **out,
                       json_t **errors) __attribute__((warn_unused_result));

/* experiments_cancel: cancels every task of the experiment not yet ended (stopping runs
 * of this process) and marks it cancelled. *out: the experiment after (caller frees).
 * ERR_NOTFOUND. */
int experiments_cancel(struct queue *q, const char *id, struct experiment **out)
    __attribute__((warn_unused_result));

/* experiments_rerun: a new task for each slot whose current task failed (only
 * "failed": ended failed or timed out) or did not solve its problem ("unsolved": any
 * end but solved), replacing it as the slot's current task; completed slots are kept.
 * *created: how many. ERR_NOTFOUND; ERR_CONFLICT when the experiment was cancelled. */
int experiments_rerun(struct queue *q, const char *id, bool unsolved, int64_t *created)
    __attribute__((warn_unused_result));

/* experiments_scoreboard: the scoreboard of experiment id (service/scoreboard.h:
 * scoreboard_compute). ERR_NOTFOUND. */
int experiments_scoreboard(struct queue *q, const char *id, json_t **out)
    __attribute__((warn_unused_result));

/* experiments_end: marks the experiments whose tasks have all ended (their webhooks made
 * due, an "experiment" event each; store_experiments_end), logging how many. Called by
 * the housekeeper every tick. */
int experiments_end(struct queue *q);

#endif
