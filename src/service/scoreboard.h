/* scoreboard: an experiment's scoreboard from the database's sums (store_experiment_
 * scoreboard): a row per (problem, agent config) and a total per agent config, as
 * CONTRACT.md "Experiments" defines them; its CSV; and the report an ended experiment's
 * callback is sent. Below the experiment rules (service/experiments.c) so that the
 * webhook sender can use it too. */
#ifndef TASKEXEC_SCOREBOARD_H
#define TASKEXEC_SCOREBOARD_H

#include "store/store.h"

#include <jansson.h>

/* scoreboard_compute: {"experiment_id","rows":[…],"totals":[…]} of experiment id (new
 * reference). ERR_NOTFOUND; the store's errors. */
int scoreboard_compute(struct store *st, const char *id, json_t **out)
    __attribute__((warn_unused_result));

/* scoreboard_csv: the scoreboard as CSV (a header, the rows, then the totals with
 * problem_id "*"). Caller frees; NULL without memory. */
char *scoreboard_csv(const json_t *board);

/* scoreboard_report: the experiment as the API shows it with its "scoreboard": what its
 * callback_url is sent when it ends. A new reference; NULL when it cannot be read. */
json_t *scoreboard_report(struct store *st, const char *id);

#endif
