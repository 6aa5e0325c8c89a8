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
                "SELECT seq FROM llm_conversations WHERE task_id = ?1 AND session_id = ?2"},
    [C_INSERT] = {"creating a conversation",
                  "INSERT INTO llm_conversations (id, task_id, session_id, model_config, "
                  "started_at) VALUES (?1, ?2, ?3, COALESCE((SELECT json_extract(parameters, "
                  "'$.agent_config') FROM tasks WHERE id = ?2), '{}'), ?4) RETURNING seq"},
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
/* The conversation of (task, session), made on its first message. */
static int conversation_seq(struct conn *c, const char *task_id, const char *session,
                            int64_t ts, int64_t *seq)
{
    char id[TASK_ID_LEN + 1];
    int rc = sq_one_i64(c, &conv_q[C_FIND], (struct sq_arg[]){SQ_T(task_id), SQ_T(session)}, 2,
                        seq);

    if (rc != ERR_NOTFOUND)
        return rc;
    uuidgen(id);
    rc = sq_one_i64(c, &conv_q[C_INSERT],
                    (struct sq_arg[]){SQ_T(id), SQ_T(task_id), SQ_T(session), SQ_I(ts)}, 4, seq);
    return rc == ERR_NOTFOUND ? sq_fail_db(c->db, conv_q[C_INSERT].what) : rc;
}

static int insert_row(struct conn *c, int64_t seq, const struct msg_entry *e)
{
    json_t *m = e->msg, *step = json_object_get(m, "step");
    struct sq_cursor cur;
    int rc = sq_open_q(&cur, c, &conv_q[C_MSG_INSERT]);

    if (rc == 0) {
        sqlite3_bind_int64(cur.s, 1, seq);
        sqlite3_bind_int64(cur.s, 2, e->ts);
        sq_bind_text(cur.s, 3, json_string_value(json_object_get(m, "role")));
        rc = sq_bind_json(cur.s, 4, json_object_get(m, "content"));
    }
    if (rc == 0 && json_is_integer(step))
        sqlite3_bind_int64(cur.s, 5, json_integer_value(step));
    if (rc == 0)
        rc = sq_bind_object(cur.s, 6, json_object_get(m, "metadata"));
    if (rc == 0)
        rc = sq_exec(&cur);
    return sq_end(&cur, rc);
}

int sq_insert_message(struct conn *c, const char *task_id, const struct msg_entry *e)
{
    json_t *m = e->msg, *sid = json_object_get(m, "session_id");
    json_t *meta = json_object_get(m, "metadata"), *model = json_object_get(meta, "model");
    int64_t seq = 0, tokens = proto_message_tokens(meta);
    struct sq_cursor cur;
    int rc;

    rc = conversation_seq(c, task_id, json_is_string(sid) ? json_string_value(sid) : task_id,
                          e->ts, &seq);
    if (rc == 0)
        rc = insert_row(c, seq, e);
    if (rc < 0)
        return rc;
    rc = sq_open_q(&cur, c, &conv_q[C_BUMP]);
    if (rc == 0) {
        sqlite3_bind_int64(cur.s, 1, seq);
        if (tokens >= 0)
            sqlite3_bind_int64(cur.s, 2, tokens);
        sqlite3_bind_int64(cur.s, 3, e->ts);
        sq_bind_text(cur.s, 4, json_is_string(model) ? json_string_value(model) : NULL);
        rc = sq_exec(&cur);
    }
    return sq_end(&cur, rc);
}

int sq_insert_messages(struct conn *c, const char *task_id, const struct msg_entry *e,
                       size_t n)
{
    int rc = 0;

    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = sq_insert_message(c, task_id, &e[i]);
    return rc;
}

int sq_messages_append(struct store *st, const char *task_id, const struct msg_entry *e,
                       size_t n)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);

    if (!c)
        return ERR_STORE;
    return sq_writer_end(ss, sq_insert_messages(c, task_id, e, n));
}

/* Sets conv's "messages" to the messages of conversation seq. */
static int add_messages(struct conn *c, int64_t seq, json_t *conv)
{
    struct sq_cursor cur;
    json_t *arr = json_array();
    int rc = arr ? sq_open_q(&cur, c, &conv_q[C_MESSAGES]) : ERR_NOMEM;

    if (rc == 0) {
        sqlite3_bind_int64(cur.s, 1, seq);
        rc = rows_collect(&cur.base, rows_message, arr);
    }
    if (arr)
        rc = sq_end(&cur, rc);
    if (rc == 0 && json_object_set_new(conv, "messages", arr))
        return ERR_NOMEM;
    if (rc < 0)
        json_decref(arr);
    return rc;
}

/* A cursor on q with the list's filters bound (?1 task, ?2 model). */
static int open_filtered(struct sq_cursor *cur, struct conn *c, int q, const char *task_id,
                         const char *model_name)
{
    int rc = sq_open_q(cur, c, &conv_q[q]);

    if (rc == 0) {
        sq_bind_text(cur->s, 1, task_id);
        sq_bind_text(cur->s, 2, model_name);
    }
    return rc;
}

int sq_conversations_list(struct store *st, const char *task_id, const char *model_name,
                          int64_t limit, int64_t offset, json_t **items, int64_t *total)
{
    struct rd r = sq_rd_get(st);
    struct sq_cursor cur;
    json_t *arr = json_array();
    int64_t n = 0;
    int rc = arr ? sq_one_i64(r.c, &conv_q[C_COUNT],
                              (struct sq_arg[]){SQ_T(task_id), SQ_T(model_name)}, 2, &n)
                 : ERR_NOMEM;

    if (rc == 0)
        rc = open_filtered(&cur, r.c, C_PAGE, task_id, model_name);
    if (rc == 0) {
        sqlite3_bind_int64(cur.s, 3, limit);
        sqlite3_bind_int64(cur.s, 4, offset);
        rc = sq_end(&cur, rows_collect(&cur.base, rows_conversation, arr));
    }
    sq_rd_put(&r);
    if (rc == 0) {
        *items = arr;
        *total = n;
    } else {
        json_decref(arr);
    }
    return rc;
}

int sq_conversation_get(struct store *st, const char *id, bool with_messages, json_t **out)
{
    struct rd r = sq_rd_get(st);
    struct sq_cursor cur;
    json_t *o = NULL;
    int rc = sq_open_q(&cur, r.c, &conv_q[C_BY_ID]);

    if (rc == 0) {
        sq_bind_text(cur.s, 1, id);
        rc = rows_one(&cur.base);
    }
    if (rc == 0) {
        o = rows_conversation(&cur.base.row);
        rc = o ? 0 : ERR_NOMEM;
    }
    if (rc == 0 && with_messages)
        rc = add_messages(r.c, sqlite3_column_int64(cur.s, 0), o);
    rc = sq_end(&cur, rc);
    sq_rd_put(&r);
    return rows_give(rc, o, out);
}

int sq_task_conversations(struct store *st, const char *task_id, json_t **out)
{
    struct rd r = sq_rd_get(st);
    struct sq_cursor cur;
    json_t *arr = json_array();
    int rc = arr ? sq_open_q(&cur, r.c, &conv_q[C_OF_TASK]) : ERR_NOMEM;

    if (rc == 0)
        sq_bind_text(cur.s, 1, task_id);
    while (rc == 0 && (rc = sq_next(&cur)) == STORE_ROW) {
        json_t *o = rows_conversation(&cur.base.row);
        if (!o || json_array_append_new(arr, o))
            rc = ERR_NOMEM;
        else
            rc = add_messages(r.c, sqlite3_column_int64(cur.s, 0), o);
    }
    if (arr)
        rc = sq_end(&cur, rc);
    sq_rd_put(&r);
    return rows_give(rc, arr, out);
}

/* The figures of every conversation. */
static int stats_totals(struct conn *c, int64_t *total, double *avg, int64_t *tokens,
                        int64_t *ok)
{
    struct sq_cursor cur;
    int rc = sq_open_q(&cur, c, &conv_q[C_STATS]);

    if (rc == 0)
        rc = rows_one(&cur.base);
    if (rc == 0) {
        *total = sqlite3_column_int64(cur.s, 0);
        *avg = sqlite3_column_double(cur.s, 1);
        *tokens = sqlite3_column_int64(cur.s, 2);
        *ok = sqlite3_column_int64(cur.s, 3);
    }
    return sq_end(&cur, rc);
}

static int stats_by_model(struct conn *c, json_t *by_model)
{
    struct sq_cursor cur;
    int rc = sq_open_q(&cur, c, &conv_q[C_BY_MODEL]);

    while (rc == 0 && (rc = sq_next(&cur)) == STORE_ROW)
        rc = json_object_set_new(by_model, (const char *)sqlite3_column_text(cur.s, 0),
                                 json_integer(sqlite3_column_int64(cur.s, 1)))
                 ? ERR_NOMEM
                 : 0;
    return sq_end(&cur, rc);
}

int sq_conversation_stats(struct store *st, json_t **out)
{
    struct rd r = sq_rd_get(st);
    json_t *by_model = json_object();
    int64_t total = 0, tokens = 0, ok = 0;
    double avg = 0;
    int rc = by_model ? stats_totals(r.c, &total, &avg, &tokens, &ok) : ERR_NOMEM;

    if (rc == 0)
        rc = stats_by_model(r.c, by_model);
    sq_rd_put(&r);
    if (rc == 0) {
        *out = rows_conversation_stats(total, avg, tokens, ok, by_model);
        rc = *out ? 0 : ERR_NOMEM;
    }
    json_decref(by_model);
    return rc;
}
