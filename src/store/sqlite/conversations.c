/* store/sqlite/conversations: LLM conversations and their messages. */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"
#include "core/log.h"
#include "model/proto.h"
#include "core/uuidgen.h"

#include <stdlib.h>

#define CONV_WHERE "WHERE (?1 IS NULL OR c.task_id = ?1) AND (?2 IS NULL OR c.model_name = ?2)"

enum {
    C_FIND,
    C_INSERT,
    C_BUMP,
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

static const struct sq_query conv_q[C_N] = {
    [C_FIND] = {"finding a conversation",
                "SELECT seq FROM llm_conversations WHERE task_id = ?1 AND session_id = ?2 AND "
                "attempt = (SELECT attempt FROM tasks WHERE id = ?1)"},
    [C_INSERT] = {"creating a conversation",
                  "INSERT INTO llm_conversations (id, task_id, session_id, model_config, "
                  "started_at, attempt) VALUES (?1, ?2, ?3, COALESCE((SELECT json_extract("
                  "parameters, '$.agent_config') FROM tasks WHERE id = ?2), '{}'), ?4, (SELECT "
                  "attempt FROM tasks WHERE id = ?2)) RETURNING seq"},
    [C_BUMP] = {"updating a conversation",
                "UPDATE llm_conversations SET total_messages = total_messages + 1, "
                "total_tokens = CASE WHEN ?2 IS NULL THEN total_tokens ELSE "
                "COALESCE(total_tokens, 0) + ?2 END, ended_at = ?3, model_name = "
                "COALESCE(model_name, ?4) WHERE seq = ?1"},
    [C_MSG_INSERT] = {"inserting a message",
                      "INSERT INTO llm_messages (conversation_seq, ts, role, content, step, "
                      "metadata) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"},
    [C_COUNT] = {"counting conversations",
                 "SELECT count(*) FROM llm_conversations c " CONV_WHERE},
    [C_PAGE] = {"listing conversations",
                "SELECT " CONV_COLS " FROM llm_conversations c " CONV_WHERE " ORDER BY "
                "c.started_at DESC, c.seq DESC LIMIT ?3 OFFSET ?4"},
    [C_BY_ID] = {"reading a conversation",
                 "SELECT " CONV_COLS " FROM llm_conversations c WHERE c.id = ?1"},
    [C_OF_TASK] = {"reading conversations",
                   "SELECT " CONV_COLS " FROM llm_conversations c WHERE c.task_id = ?1 "
                   "ORDER BY c.seq"},
    [C_MESSAGES] = {"reading messages",
                    "SELECT ts, role, content, step, metadata FROM llm_messages "
                    "WHERE conversation_seq = ?1 ORDER BY id"},
    [C_STATS] = {"conversation stats",
                 "SELECT count(*), COALESCE(avg(total_messages), 0), "
                 "COALESCE(sum(total_tokens), 0), COALESCE(sum(json_extract(metadata, "
                 "'$.success') = 1), 0) FROM llm_conversations"},
    [C_BY_MODEL] = {"conversation stats",
                    "SELECT model_name, count(*) FROM llm_conversations "
                    "WHERE model_name IS NOT NULL GROUP BY model_name"},
};

/* The conversation of (task, session), made on its first message. */
static int conversation_seq(struct conn *c, const char *task_id, const char *session,
                            int64_t ts, int64_t *seq)
{
    char id[TASK_ID_LEN + 1];
    int rc = sq_one_i64(c, &conv_q[C_FIND], (struct db_arg[]){DB_T(task_id), DB_T(session)}, 2,
                        seq);

    if (rc != ERR_NOTFOUND)
        return rc;
    uuidgen(id);
    rc = sq_one_i64(c, &conv_q[C_INSERT],
                    (struct db_arg[]){DB_T(id), DB_T(task_id), DB_T(session), DB_I(ts)}, 4, seq);
    return rc == ERR_NOTFOUND ? sq_fail_db(c->db, conv_q[C_INSERT].what) : rc;
}

/* One message (and its conversation, made on its first message). */
static int insert_message(struct conn *c, const char *task_id, const struct msg_entry *e)
{
    json_t *m = e->msg, *sid = json_object_get(m, "session_id"), *step = json_object_get(m, "step");
    json_t *meta = json_object_get(m, "metadata"), *model = json_object_get(meta, "model");
    int64_t seq = 0, tokens = proto_message_tokens(meta);
    int rc = conversation_seq(c, task_id, json_is_string(sid) ? json_string_value(sid) : task_id,
                              e->ts, &seq);

    if (rc == 0) {
        const struct db_arg args[6] = {
            DB_I(seq), DB_I(e->ts), DB_T(json_string_value(json_object_get(m, "role"))),
            DB_J(json_object_get(m, "content")),
            json_is_integer(step) ? DB_I(json_integer_value(step)) : DB_T(NULL), DB_O(meta)};
        rc = sq_run(c, &conv_q[C_MSG_INSERT], args, 6, NULL);
    }
    if (rc == 0) {
        const struct db_arg args[4] = {DB_I(seq), tokens >= 0 ? DB_I(tokens) : DB_T(NULL),
                                       DB_I(e->ts),
                                       DB_T(json_is_string(model) ? json_string_value(model)
                                                                  : NULL)};
        rc = sq_run(c, &conv_q[C_BUMP], args, 4, NULL);
    }
    return rc;
}

int sq_insert_messages(struct conn *c, void *batch)
{
    const struct sq_batch *b = batch;
    const struct msg_entry *e = b->items;
    int rc = 0;

    for (size_t i = 0; rc == 0 && i < b->n; i++)
        rc = insert_message(c, b->task_id, &e[i]);
    return rc;
}

int sq_messages_append(struct store *st, const char *task_id, const struct msg_entry *e,
                       size_t n)
{
    return sq_in_write(st, sq_insert_messages, &(struct sq_batch){task_id, e, n});
}

/* Sets conv's "messages" to the messages of conversation seq, read on conn (a
 * struct conn; for rows_take_convs). */
static int add_messages(void *conn, int64_t seq, json_t *conv)
{
    struct conn *c = conn;
    struct rows_array a = {.build = rows_message};
    int rc = sq_take(c, &conv_q[C_MESSAGES], &DB_I(seq), 1, rows_take_array, &a);

    if (rc == 0 && json_object_set_new(conv, "messages", a.v))
        return ERR_NOMEM; /* set_new took a.v */
    return rc;
}

int sq_conversations_list(struct store *st, const char *task_id, const char *model_name,
                          int64_t limit, int64_t offset, json_t **items, int64_t *total)
{
    const struct db_arg args[4] = {DB_T(task_id), DB_T(model_name), DB_I(limit), DB_I(offset)};
    struct rows_array page = {.build = rows_conversation};
    struct rd r = sq_rd_get(st);
    int64_t n = 0;
    int rc = sq_one_i64(r.c, &conv_q[C_COUNT], args, 2, &n);

    if (rc == 0)
        rc = sq_take(r.c, &conv_q[C_PAGE], args, 4, rows_take_array, &page);
    sq_rd_put(&r);
    if (rc == 0)
        *total = n;
    return rows_give(rc, page.v, items);
}

/* The conversations q reads for key (with one, the first: ERR_NOTFOUND when none),
 * with their messages when asked. */
static int read_convs(struct store *st, int q, const char *key, bool one, bool with_messages,
                      json_t **out)
{
    struct rd r = sq_rd_get(st);
    struct rows_convs x = {add_messages, r.c, one, with_messages, NULL};
    int rc = sq_take(r.c, &conv_q[q], &DB_T(key), 1, rows_take_convs, &x);

    sq_rd_put(&r);
    return rows_give(rc, x.v, out);
}

int sq_conversation_get(struct store *st, const char *id, bool with_messages, json_t **out)
{
    return read_convs(st, C_BY_ID, id, true, with_messages, out);
}

int sq_task_conversations(struct store *st, const char *task_id, json_t **out)
{
    return read_convs(st, C_OF_TASK, task_id, false, true, out);
}

int sq_conversation_stats(struct store *st, json_t **out)
{
    struct rd r = sq_rd_get(st);
    json_t *by_model = json_object();
    struct rows_conv_totals t = {0};
    int rc = by_model ? sq_take(r.c, &conv_q[C_STATS], NULL, 0, rows_take_conv_totals, &t)
                      : ERR_NOMEM;

    if (rc == 0)
        rc = sq_take(r.c, &conv_q[C_BY_MODEL], NULL, 0, rows_take_by_model, by_model);
    sq_rd_put(&r);
    if (rc == 0) {
        *out = rows_conversation_stats(t.total, t.avg_messages, t.tokens, t.successful, by_model);
        rc = *out ? 0 : ERR_NOMEM;
    }
    json_decref(by_model);
    return rc;
}
