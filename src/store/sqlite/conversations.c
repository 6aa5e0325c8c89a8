/* store/sqlite/conversations: appending LLM messages, each finding or making its
 * conversation and updating its counts in statements of their own, inside the write
 * transaction. Reading conversations is written once, in store/conversations.c. */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"
#include "core/log.h"
#include "model/proto.h"
#include "core/uuidgen.h"

#include <stdlib.h>

enum { C_FIND, C_INSERT, C_BUMP, C_MSG_INSERT, C_N };

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

int sq_insert_messages(struct db_conn *dc, const char *task_id, const struct msg_entry *e,
                       size_t n)
{
    struct conn *c = sq_conn(dc);
    int rc = 0;

    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = insert_message(c, task_id, &e[i]);
    return rc;
}
