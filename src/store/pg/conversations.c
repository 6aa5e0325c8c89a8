/* store/pg/conversations: LLM conversations and their messages. */
#include "store/pg/pg_int.h"
#include "core/err.h"
#include "core/log.h"
#include "model/proto.h"
#include "core/uuidgen.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Inserts messages on pc, inside the caller's transaction; *rc set on failure. */
void pg_insert_messages(struct pgconn *pc, const char *task_id, const struct msg_entry *e,
                     size_t n, int *rcp)
{
    int rc = *rcp;
    PGresult *r;
    char seq[24] = "", seq_of[256] = ""; /* the conversation of the previous message */

    for (size_t i = 0; rc == 0 && i < n; i++) {
        json_t *m = e[i].msg, *sid = json_object_get(m, "session_id");
        json_t *step = json_object_get(m, "step"), *meta = json_object_get(m, "metadata");
        json_t *model = json_object_get(meta, "model");
        int64_t tokens = proto_message_tokens(meta);
        const char *session = json_is_string(sid) ? json_string_value(sid) : task_id;
        char id[TASK_ID_LEN + 1], *content, *metatext;
        struct num a, b, c;
        const char *cv[4] = {id, task_id, session, num(&a, e[i].ts)};

        /* A run's messages mostly share one conversation: find or make it once a batch. */
        if (!seq[0] || strcmp(seq_of, session)) {
            uuidgen(id);
            r = pg_run(pc, Q_CONV_UPSERT, 4, cv, &rc);
            if (!r)
                break;
            snprintf(seq, sizeof(seq), "%s", PQgetvalue(r, 0, 0));
            snprintf(seq_of, sizeof(seq_of), "%s", strlen(session) < sizeof(seq_of) ? session : "");
            PQclear(r);
        }
        content = json_dumps(json_object_get(m, "content"), JSON_COMPACT | JSON_ENCODE_ANY);
        metatext = meta ? json_dumps(meta, JSON_COMPACT) : strdup("{}");
        const char *mv[8] = {seq, a.s, json_string_value(json_object_get(m, "role")),
                             content ? content : "null",
                             json_is_integer(step) ? num(&b, json_integer_value(step)) : NULL,
                             metatext ? metatext : "{}", tokens >= 0 ? num(&c, tokens) : NULL,
                             json_is_string(model) ? json_string_value(model) : NULL};
        PQclear(pg_run(pc, Q_MSG_INSERT, 8, mv, &rc));
        free(content);
        free(metatext);
    }
    *rcp = rc;
}

int pg_messages_append(struct store *st, const char *task_id, const struct msg_entry *e,
                       size_t n)
{
    struct pgconn *pc = pg_conn_get(P(st));
    int rc = 0;

    if (n)
        PQclear(pg_run_sql(pc, "BEGIN", 0, NULL, &rc));
    pg_insert_messages(pc, task_id, e, n, &rc);
    if (n) {
        int rc2;
        PQclear(pg_run_sql(pc, rc == 0 ? "COMMIT" : "ROLLBACK", 0, NULL, &rc2));
        if (rc == 0)
            rc = rc2;
    }
    pg_conn_put(P(st), pc);
    return rc;
}

static json_t *row_conversation(PGresult *r, int i)
{
    json_t *tokens = PQgetisnull(r, i, 9) ? json_null() : json_integer(pg_get_i64(r, i, 9));
    json_t *meta = pg_get_json_or_null(r, i, 10);
    json_t *success = json_object_get(meta, "success");
    json_t *cfg = pg_get_json_or_null(r, i, 5);

    return json_pack("{s:o, s:o, s:o, s:o, s:O, s:o, s:o, s:o, s:I, s:o, s:o, s:O}", "id",
                     pg_get_str(r, i, 1), "task_id", pg_get_str(r, i, 2), "session_id",
                     pg_get_str(r, i, 3), "model_name", pg_get_str(r, i, 4), "model_config", cfg,
                     "llm_config", cfg, "started_at", pg_get_time(r, i, 6), "ended_at",
                     pg_get_time(r, i, 7), "total_messages", (json_int_t)pg_get_i64(r, i, 8),
                     "total_tokens", tokens, "metadata", meta, "success",
                     success ? success : json_null());
}

static int load_messages(struct pgconn *pc, const char *seq, json_t *conv)
{
    const char *v[1] = {seq};
    json_t *arr = json_array();
    int rc = arr ? 0 : ERR_NOMEM;
    PGresult *r = NULL;

    if (rc == 0)
        r = pg_run_sql(pc, "SELECT te_us(ts), role, content::text, step, metadata::text FROM "
                        "llm_messages WHERE conversation_seq = $1 ORDER BY id", 1, v, &rc);
    for (int i = 0; r && rc == 0 && i < PQntuples(r); i++) {
        json_t *step = PQgetisnull(r, i, 3) ? json_null() : json_integer(pg_get_i64(r, i, 3));
        json_t *m = json_pack("{s:o, s:o, s:o, s:o, s:o}", "timestamp", pg_get_time(r, i, 0),
                              "role", pg_get_str(r, i, 1), "content", pg_get_json_or_null(r, i, 2),
                              "step", step, "metadata", pg_get_json_or_null(r, i, 4));
        if (!m || json_array_append_new(arr, m))
            rc = ERR_NOMEM;
    }
    PQclear(r);
    if (rc == 0 && json_object_set_new(conv, "messages", arr))
        return ERR_NOMEM;
    if (rc < 0)
        json_decref(arr);
    return rc;
}

int pg_conversations_list(struct store *st, const char *task_id, const char *model_name,
                          int64_t limit, int64_t offset, json_t **items, int64_t *total)
{
    struct pgconn *pc = pg_conn_get(P(st));
    struct num a, b;
    const char *v[4] = {task_id, model_name, num(&a, limit), num(&b, offset)};
    const char *where = "WHERE ($1::uuid IS NULL OR c.task_id = $1::uuid) AND ($2::text IS "
                        "NULL OR c.model_name = $2)";
    char sql[1024];
    json_t *arr = json_array();
    int rc = arr ? 0 : ERR_NOMEM;
    PGresult *r = NULL;

    snprintf(sql, sizeof(sql), "SELECT count(*) FROM llm_conversations c %s", where);
    if (rc == 0)
        r = pg_run_sql(pc, sql, 2, v, &rc);
    if (r)
        *total = pg_get_i64(r, 0, 0);
    PQclear(r);
    r = NULL;
    snprintf(sql, sizeof(sql), "SELECT " CONV_COLS " FROM llm_conversations c %s ORDER BY "
             "c.started_at DESC, c.seq DESC LIMIT $3 OFFSET $4", where);
    if (rc == 0)
        r = pg_run_sql(pc, sql, 4, v, &rc);
    for (int i = 0; r && rc == 0 && i < PQntuples(r); i++) {
        json_t *o = row_conversation(r, i);
        if (!o || json_array_append_new(arr, o))
            rc = ERR_NOMEM;
    }
    PQclear(r);
    pg_conn_put(P(st), pc);
    if (rc == 0)
        *items = arr;
    else
        json_decref(arr);
    return rc;
}

int pg_conversation_get(struct store *st, const char *id, bool with_messages,
                        json_t **out)
{
    struct pgconn *pc = pg_conn_get(P(st));
    const char *v[1] = {id};
    json_t *o = NULL;
    int rc;
    PGresult *r = pg_run_sql(pc, "SELECT " CONV_COLS " FROM llm_conversations c WHERE c.id = $1", 1,
                          v, &rc);

    if (r && PQntuples(r) == 0)
        rc = ERR_NOTFOUND;
    if (r && rc == 0) {
        o = row_conversation(r, 0);
        rc = o ? 0 : ERR_NOMEM;
        if (rc == 0 && with_messages)
            rc = load_messages(pc, PQgetvalue(r, 0, 0), o);
    }
    PQclear(r);
    pg_conn_put(P(st), pc);
    if (rc == 0)
        *out = o;
    else
        json_decref(o);
    return rc;
}

int pg_task_conversations(struct store *st, const char *task_id, json_t **out)
{
    struct pgconn *pc = pg_conn_get(P(st));
    const char *v[1] = {task_id};
    json_t *arr = json_array();
    int rc = arr ? 0 : ERR_NOMEM;
    PGresult *r = NULL;

    if (rc == 0)
        r = pg_run_sql(pc, "SELECT " CONV_COLS " FROM llm_conversations c WHERE c.task_id = $1 "
                        "ORDER BY c.seq", 1, v, &rc);
    for (int i = 0; r && rc == 0 && i < PQntuples(r); i++) {
        json_t *o = row_conversation(r, i);
        if (!o || json_array_append_new(arr, o)) {
            rc = ERR_NOMEM;
            break;
        }
        rc = load_messages(pc, PQgetvalue(r, i, 0), o);
    }
    PQclear(r);
    pg_conn_put(P(st), pc);
    if (rc == 0)
        *out = arr;
    else
        json_decref(arr);
    return rc;
}

int pg_conversation_stats(struct store *st, json_t **out)
{
    struct pgconn *pc = pg_conn_get(P(st));
    json_t *by_model = json_object();
    int rc = by_model ? 0 : ERR_NOMEM;
    int64_t total = 0, tokens = 0, ok = 0;
    double avg = 0;
    PGresult *r = NULL;

    if (rc == 0)
        r = pg_run_sql(pc, "SELECT count(*), COALESCE(avg(total_messages), 0), "
                        "COALESCE(sum(total_tokens), 0), count(*) FILTER (WHERE "
                        "metadata->'success' = 'true') FROM llm_conversations", 0, NULL, &rc);
    if (r) {
        total = pg_get_i64(r, 0, 0);
        avg = strtod(PQgetvalue(r, 0, 1), NULL);
        tokens = pg_get_i64(r, 0, 2);
        ok = pg_get_i64(r, 0, 3);
    }
    PQclear(r);
    r = NULL;
    if (rc == 0)
        r = pg_run_sql(pc, "SELECT model_name, count(*) FROM llm_conversations WHERE model_name IS "
                        "NOT NULL GROUP BY model_name", 0, NULL, &rc);
    for (int i = 0; r && i < PQntuples(r); i++)
        json_object_set_new(by_model, PQgetvalue(r, i, 0), json_integer(pg_get_i64(r, i, 1)));
    PQclear(r);
    pg_conn_put(P(st), pc);
    if (rc == 0) {
        *out = json_pack("{s:I, s:O, s:f, s:I, s:f, s:I}", "total_conversations",
                         (json_int_t)total, "conversations_by_model", by_model,
                         "avg_messages_per_conversation", avg, "total_tokens_consumed",
                         (json_int_t)tokens, "success_rate",
                         total ? (double)ok / (double)total : 0.0, "successful_conversations",
                         (json_int_t)ok);
        if (!*out)
            rc = ERR_NOMEM;
    }
    json_decref(by_model);
    return rc;
}
