/* store/pg/conversations: appending LLM messages: one upsert finds or makes a
 * conversation (once a batch while the session stays the same), one statement inserts
 * a message and counts it. Reading conversations is written once, in
 * store/conversations.c. */
#include "store/pg/pg_int.h"
#include "core/err.h"
#include "core/log.h"
#include "model/proto.h"
#include "core/uuidgen.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct pg_query conv_upsert = {
    "finding a conversation",
    "INSERT INTO llm_conversations (id, task_id, session_id, model_config, "
    "started_at, attempt) SELECT $1, $2, $3, COALESCE(t.parameters->"
    "'agent_config', '{}'), te_ts($4), COALESCE(t.attempt, 1) FROM (SELECT 1) one "
    "LEFT JOIN tasks t ON t.id = $2 ON CONFLICT (task_id, session_id, attempt) DO "
    "UPDATE SET task_id = EXCLUDED.task_id RETURNING seq"};

static const struct pg_query msg_insert = {
    "inserting a message",
    "WITH m AS (INSERT INTO llm_messages (conversation_seq, ts, role, "
    "content, step, metadata) VALUES ($1, te_ts($2), $3, $4::jsonb, $5, "
    "$6::jsonb)) UPDATE llm_conversations SET total_messages = "
    "total_messages + 1, total_tokens = CASE WHEN $7::bigint IS NULL THEN "
    "total_tokens ELSE COALESCE(total_tokens, 0) + $7 END, ended_at = "
    "te_ts($2), model_name = COALESCE(model_name, $8) WHERE seq = $1"};

/* The conversation of (task, session) into seq (text), made on its first message. */
static int conversation_seq(struct pgconn *pc, const char *task_id, const char *session,
                            int64_t ts, char seq[24])
{
    char id[TASK_ID_LEN + 1];
    struct num a;
    const char *v[4] = {id, task_id, session, num(&a, ts)};
    struct rows_ints x = {.n = 1};
    int rc;

    uuidgen(id);
    rc = pg_take(pc, &conv_upsert, 4, v, rows_take_ints, &x);
    if (rc == 0)
        snprintf(seq, 24, "%" PRId64, x.v[0]);
    return rc;
}

static int insert_one(struct pgconn *pc, const char *seq, const struct msg_entry *e)
{
    json_t *m = e->msg, *step = json_object_get(m, "step"), *meta = json_object_get(m, "metadata");
    json_t *model = json_object_get(meta, "model");
    int64_t tokens = proto_message_tokens(meta);
    char *content = json_dumps(json_object_get(m, "content"), JSON_COMPACT | JSON_ENCODE_ANY);
    char *metatext = meta ? json_dumps(meta, JSON_COMPACT) : NULL;
    struct num a, b, c;
    const char *v[8] = {seq, num(&a, e->ts), json_string_value(json_object_get(m, "role")),
                        content ? content : "null",
                        json_is_integer(step) ? num(&b, json_integer_value(step)) : NULL,
                        metatext ? metatext : "{}", tokens >= 0 ? num(&c, tokens) : NULL,
                        json_is_string(model) ? json_string_value(model) : NULL};
    int rc;

    PQclear(pg_run(pc, &msg_insert, 8, v, &rc));
    free(content);
    free(metatext);
    return rc;
}

int pg_insert_messages(struct db_conn *dc, const char *task_id, const struct msg_entry *e,
                       size_t n)
{
    struct pgconn *pc = pg_conn(dc);
    char seq[24] = "", seq_of[256] = ""; /* the conversation of the previous message */
    int rc = 0;

    for (size_t i = 0; rc == 0 && i < n; i++) {
        json_t *sid = json_object_get(e[i].msg, "session_id");
        const char *session = json_is_string(sid) ? json_string_value(sid) : task_id;

        /* A run's messages mostly share one conversation: find or make it once a batch. */
        if (!seq[0] || strcmp(seq_of, session)) {
            rc = conversation_seq(pc, task_id, session, e[i].ts, seq);
            snprintf(seq_of, sizeof(seq_of), "%s", strlen(session) < sizeof(seq_of) ? session : "");
        }
        if (rc == 0)
            rc = insert_one(pc, seq, &e[i]);
    }
    return rc;
}
