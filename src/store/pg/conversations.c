/* store/pg/conversations: LLM conversations and their messages. */
#include "store/pg/pg_int.h"
#include "core/err.h"
#include "core/log.h"
#include "model/proto.h"
#include "core/uuidgen.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONV_WHERE                                                                         \
    "WHERE ($1::uuid IS NULL OR c.task_id = $1::uuid) AND ($2::text IS NULL OR "            \
    "c.model_name = $2)"

enum {
    C_UPSERT,
    C_MSG_INSERT,
    C_COUNT,
    C_PAGE,
    C_BY_ID,
    C_OF_TASK,
    C_MESSAGES,
    C_STATS,
    C_BY_MODEL,
    C_N
};

static const struct pg_query conv_q[C_N] = {
    [C_UPSERT] = {"finding a conversation",
                  "INSERT INTO llm_conversations (id, task_id, session_id, model_config, "
                  "started_at, attempt) SELECT $1, $2, $3, COALESCE(t.parameters->"
                  "'agent_config', '{}'), te_ts($4), COALESCE(t.attempt, 1) FROM (SELECT 1) one "
                  "LEFT JOIN tasks t ON t.id = $2 ON CONFLICT (task_id, session_id, attempt) DO "
                  "UPDATE SET task_id = EXCLUDED.task_id RETURNING seq"},
    [C_MSG_INSERT] = {"inserting a message",
                      "WITH m AS (INSERT INTO llm_messages (conversation_seq, ts, role, "
                      "content, step, metadata) VALUES ($1, te_ts($2), $3, $4::jsonb, $5, "
                      "$6::jsonb)) UPDATE llm_conversations SET total_messages = "
                      "total_messages + 1, total_tokens = CASE WHEN $7::bigint IS NULL THEN "
                      "total_tokens ELSE COALESCE(total_tokens, 0) + $7 END, ended_at = "
                      "te_ts($2), model_name = COALESCE(model_name, $8) WHERE seq = $1"},
    [C_COUNT] = {"counting conversations",
                 "SELECT count(*) FROM llm_conversations c " CONV_WHERE},
    [C_PAGE] = {"listing conversations",
                "SELECT " CONV_COLS " FROM llm_conversations c " CONV_WHERE " ORDER BY "
                "c.started_at DESC, c.seq DESC LIMIT $3 OFFSET $4"},
    [C_BY_ID] = {"reading a conversation",
                 "SELECT " CONV_COLS " FROM llm_conversations c WHERE c.id = $1"},
    [C_OF_TASK] = {"reading conversations",
                   "SELECT " CONV_COLS " FROM llm_conversations c WHERE c.task_id = $1 "
                   "ORDER BY c.seq"},
    [C_MESSAGES] = {"reading messages",
                    "SELECT te_us(ts), role, content::text, step, metadata::text FROM "
                    "llm_messages WHERE conversation_seq = $1 ORDER BY id"},
    [C_STATS] = {"conversation stats",
                 "SELECT count(*), COALESCE(avg(total_messages), 0), "
                 "COALESCE(sum(total_tokens), 0), count(*) FILTER (WHERE metadata->'success' = "
                 "'true') FROM llm_conversations"},
    [C_BY_MODEL] = {"conversation stats",
                    "SELECT model_name, count(*) FROM llm_conversations WHERE model_name IS "
                    "NOT NULL GROUP BY model_name"},
};

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
    rc = pg_take(pc, &conv_q[C_UPSERT], 4, v, rows_take_ints, &x);
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

    PQclear(pg_run(pc, &conv_q[C_MSG_INSERT], 8, v, &rc));
    free(content);
    free(metatext);
    return rc;
}

int pg_insert_messages(struct pgconn *pc, const char *task_id, const struct msg_entry *e,
                       size_t n)
{
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

/* The context of append's body. */
struct append {
    const char *task_id;
    const struct msg_entry *e;
    size_t n;
};

static int append(struct pgconn *pc, void *ctx)
{
    struct append *x = ctx;

    return pg_insert_messages(pc, x->task_id, x->e, x->n);
}

int pg_messages_append(struct store *st, const char *task_id, const struct msg_entry *e,
                       size_t n)
{
    struct append x = {task_id, e, n};

    return n ? pg_in_tx(st, append, &x) : 0;
}

/* Sets conv's "messages" to the messages of conversation seq, read on conn (a
 * struct pgconn; for rows_take_convs). */
static int add_messages(void *conn, int64_t seq, json_t *conv)
{
    struct pgconn *pc = conn;
    struct num n;
    const char *v[1] = {num(&n, seq)};
    struct rows_array a = {.build = rows_message};
    int rc = pg_take(pc, &conv_q[C_MESSAGES], 1, v, rows_take_array, &a);

    if (rc == 0 && json_object_set_new(conv, "messages", a.v))
        return ERR_NOMEM; /* set_new took a.v */
    return rc;
}

int pg_conversations_list(struct store *st, const char *task_id, const char *model_name,
                          int64_t limit, int64_t offset, json_t **items, int64_t *total)
{
    struct num a, b;
    const char *v[4] = {task_id, model_name, num(&a, limit), num(&b, offset)};

    return pg_read_page(st, &conv_q[C_COUNT], &conv_q[C_PAGE], 4, v, rows_conversation, items,
                        total);
}

/* The conversations q reads for key (with one, the first: ERR_NOTFOUND when none),
 * with their messages when asked. */
static int read_convs(struct store *st, int q, const char *key, bool one, bool with_messages,
                      json_t **out)
{
    struct pgconn *pc = pg_conn_get(P(st));
    const char *v[1] = {key};
    struct rows_convs x = {add_messages, pc, one, with_messages, NULL};
    int rc = pg_take(pc, &conv_q[q], 1, v, rows_take_convs, &x);

    pg_conn_put(P(st), pc);
    return rows_give(rc, x.v, out);
}

int pg_conversation_get(struct store *st, const char *id, bool with_messages, json_t **out)
{
    return read_convs(st, C_BY_ID, id, true, with_messages, out);
}

int pg_task_conversations(struct store *st, const char *task_id, json_t **out)
{
    return read_convs(st, C_OF_TASK, task_id, false, true, out);
}

int pg_conversation_stats(struct store *st, json_t **out)
{
    struct pgconn *pc = pg_conn_get(P(st));
    json_t *by_model = json_object();
    struct rows_conv_totals t = {0};
    int rc = by_model ? pg_take(pc, &conv_q[C_STATS], 0, NULL, rows_take_conv_totals, &t)
                      : ERR_NOMEM;

    if (rc == 0)
        rc = pg_take(pc, &conv_q[C_BY_MODEL], 0, NULL, rows_take_by_model, by_model);
    pg_conn_put(P(st), pc);
    if (rc == 0) {
        *out = rows_conversation_stats(t.total, t.avg_messages, t.tokens, t.successful, by_model);
        rc = *out ? 0 : ERR_NOMEM;
    }
    json_decref(by_model);
    return rc;
}
