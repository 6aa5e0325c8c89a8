/* store/sqlite/webhooks: due deliveries (leased) and their results. */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>

int sq_webhooks_due(struct store *st, int64_t now, int64_t lease_us, size_t max,
                    struct webhook_job *jobs, size_t *n)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    *n = 0;
    if (!c)
        return ERR_STORE;
    /* Leasing a delivery pushes its next attempt out, so no other sender takes it. */
    if (sqlite3_prepare_v2(c->db, "UPDATE tasks SET webhook_next_at = ?1 + ?2 WHERE seq IN "
                                  "(SELECT seq FROM tasks WHERE webhook_state = 'pending' AND "
                                  "webhook_next_at <= ?1 ORDER BY webhook_next_at LIMIT ?3) "
                                  "RETURNING id, callback_url, webhook_attempts", -1, &s,
                           NULL) != SQLITE_OK)
        return sq_writer_end(ss, sq_fail_db(c->db, "webhooks"));
    sqlite3_bind_int64(s, 1, now);
    sqlite3_bind_int64(s, 2, lease_us);
    sqlite3_bind_int64(s, 3, (int64_t)max);
    while (*n < max && sqlite3_step(s) == SQLITE_ROW) {
        struct webhook_job *j = &jobs[*n];
        snprintf(j->task_id, sizeof(j->task_id), "%s", sqlite3_column_text(s, 0));
        j->url = sq_col_dup(s, 1);
        j->attempts = sqlite3_column_int(s, 2);
        if (!j->url) {
            rc = ERR_NOMEM;
            break;
        }
        (*n)++;
    }
    sqlite3_finalize(s);
    if (rc < 0)
        for (size_t i = 0; i < *n; i++)
            free(jobs[i].url);
    return sq_writer_end(ss, rc);
}

int sq_webhook_result(struct store *st, const char *task_id, const char *state,
                      int attempts, int64_t next_at, const char *error)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    sqlite3_stmt *s = NULL;
    int rc = 0;

    if (!c)
        return ERR_STORE;
    if (sqlite3_prepare_v2(c->db, "UPDATE tasks SET webhook_state = ?2, webhook_attempts = ?3, "
                                  "webhook_next_at = ?4, webhook_error = ?5 WHERE id = ?1", -1,
                           &s, NULL) != SQLITE_OK)
        return sq_writer_end(ss, sq_fail_db(c->db, "webhooks"));
    sq_bind_text(s, 1, task_id);
    sq_bind_text(s, 2, state);
    sqlite3_bind_int(s, 3, attempts);
    sqlite3_bind_int64(s, 4, next_at);
    sq_bind_text(s, 5, error);
    if (sqlite3_step(s) != SQLITE_DONE)
        rc = sq_fail_db(c->db, "webhooks");
    sqlite3_finalize(s);
    return sq_writer_end(ss, rc);
}
