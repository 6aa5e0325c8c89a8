/* store/sqlite/conversations: LLM conversations and their messages. */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"
#include "core/log.h"
#include "model/proto.h"
#include "core/uuidgen.h"

#include <stdlib.h>

int sq_conversation_seq(struct conn *c, const char *task_id, const char *session,
                     int64_t ts, int64_t *seq)
{
    sqlite3_stmt *s = sq_stmt(c, Q_CONV_FIND);
    char id[TASK_ID_LEN + 1];
    int rc = ERR_STORE, step;

    if (!s)
        return ERR_STORE;
    sq_bind_text(s, 1, task_id);
    sq_bind_text(s, 2, session);
    step = sqlite3_step(s);
    if (step == SQLITE_ROW) {
        *seq = sqlite3_column_int64(s, 0);
        rc = 0;
    } else if (step != SQLITE_DONE) {
        rc = sq_fail_db(c->db, "finding a conversation");
    }
    sq_done(s);
    if (step != SQLITE_DONE)
        return rc;
    s = sq_stmt(c, Q_CONV_INSERT);
    if (!s)
        return ERR_STORE;
    uuidgen(id);
    sq_bind_text(s, 1, id);
    sq_bind_text(s, 2, task_id);
    sq_bind_text(s, 3, session);
    sqlite3_bind_int64(s, 4, ts);
    if (sqlite3_step(s) == SQLITE_ROW) {
        *seq = sqlite3_column_int64(s, 0);
        rc = 0;
    } else {
        rc = sq_fail_db(c->db, "creating a conversation");
    }
    sq_done(s);
    return rc;
}

int sq_insert_message(struct conn *c, const char *task_id, const struct msg_entry *e)
{
    json_t *m = e->msg, *sid = json_object_get(m, "session_id"), *step = json_object_get(m, "step");
    json_t *meta = json_object_get(m, "metadata"), *model = json_object_get(meta, "model");
    sqlite3_stmt *s;
    int64_t seq, tokens = proto_message_tokens(meta);
    int rc;

    rc = sq_conversation_seq(c, task_id, json_is_string(sid) ? json_string_value(sid) : task_id,
                          e->ts, &seq);
    if (rc < 0)
        return rc;
    s = sq_stmt(c, Q_MSG_INSERT);
    if (!s)
        return ERR_STORE;
    sqlite3_bind_int64(s, 1, seq);
    sqlite3_bind_int64(s, 2, e->ts);
    sq_bind_text(s, 3, json_string_value(json_object_get(m, "role")));
    rc = sq_bind_json(s, 4, json_object_get(m, "content"));
    if (json_is_integer(step))
        sqlite3_bind_int64(s, 5, json_integer_value(step));
    if (rc == 0)
        rc = sq_bind_object(s, 6, meta);
    if (rc == 0 && sqlite3_step(s) != SQLITE_DONE)
        rc = sq_fail_db(c->db, "inserting a message");
    sq_done(s);
    if (rc < 0 || !(s = sq_stmt(c, Q_CONV_BUMP)))
        return rc < 0 ? rc : ERR_STORE;
    sqlite3_bind_int64(s, 1, seq);
    if (tokens >= 0)
        sqlite3_bind_int64(s, 2, tokens);
    sqlite3_bind_int64(s, 3, e->ts);
    sq_bind_text(s, 4, json_is_string(model) ? json_string_value(model) : NULL);
    if (sqlite3_step(s) != SQLITE_DONE)
        rc = sq_fail_db(c->db, "updating a conversation");
    sq_done(s);
    return rc;
}

int sq_messages_append(struct store *st, const char *task_id, const struct msg_entry *e,
                       size_t n)
{
    struct sqlite_store *ss = S(st);
    struct conn *c = sq_writer_begin(ss);
    int rc = 0;

    if (!c)
        return ERR_STORE;
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = sq_insert_message(c, task_id, &e[i]);
    return sq_writer_end(ss, rc);
}

static json_t *row_conversation(sqlite3_stmt *s)
{
    json_t *tokens = sqlite3_column_type(s, 9) == SQLITE_NULL
                         ? json_null()
                         : json_integer(sqlite3_column_int64(s, 9));
    json_t *meta = sq_col_json_or_null(s, 10);
    json_t *success = json_object_get(meta, "success");
    json_t *cfg = sq_col_json_or_null(s, 5);

    return json_pack("{s:o, s:o, s:o, s:o, s:O, s:o, s:o, s:o, s:I, s:o, s:o, s:O}", "id",
                     sq_col_str(s, 1), "task_id", sq_col_str(s, 2), "session_id", sq_col_str(s, 3),
                     "model_name", sq_col_str(s, 4), "model_config", cfg, "llm_config", cfg,
                     "started_at", sq_col_time(s, 6), "ended_at", sq_col_time(s, 7),
                     "total_messages", (json_int_t)sqlite3_column_int64(s, 8), "total_tokens",
                     tokens, "metadata", meta, "success", success ? success : json_null());
}

static int load_messages(struct conn *c, int64_t seq, json_t *conv)
{
    sqlite3_stmt *s = NULL;
    json_t *arr = json_array();
    int rc = 0;

    if (!arr)
        return ERR_NOMEM;
    if (!(s = sq_stmt(c, Q_CONV_MSGS))) {
        json_decref(arr);
        return sq_fail_db(c->db, "reading messages");
    }
    sqlite3_bind_int64(s, 1, seq);
    while (rc == 0 && sqlite3_step(s) == SQLITE_ROW) {
        json_t *step = sqlite3_column_type(s, 3) == SQLITE_NULL
                           ? json_null()
                           : json_integer(sqlite3_column_int64(s, 3));
        json_t *m = json_pack("{s:o, s:o, s:o, s:o, s:o}", "timestamp", sq_col_time(s, 0), "role",
                              sq_col_str(s, 1), "content", sq_col_json_or_null(s, 2), "step", step,
                              "metadata", sq_col_json_or_null(s, 4));
        if (!m || json_array_append_new(arr, m))
            rc = ERR_NOMEM;
    }
    sq_done(s);
    if (rc == 0 && json_object_set_new(conv, "messages", arr))
        return ERR_NOMEM;
    if (rc < 0)
        json_decref(arr);
    return rc;
}

int sq_conversations_list(struct store *st, const char *task_id, const char *model_name,
                          int64_t limit, int64_t offset, json_t **items, int64_t *total)
{
    struct rd r = sq_rd_get(st);
    sqlite3_stmt *s = NULL;
    json_t *arr = json_array();
    int rc = 0;
    const char *where = "WHERE (?1 IS NULL OR c.task_id = ?1) AND (?2 IS NULL OR "
                        "c.model_name = ?2)";
    char sql[1024];

    if (!arr) {
        rc = ERR_NOMEM;
        goto out;
    }
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM llm_conversations c %s", where);
    if (sqlite3_prepare_v2(r.c->db, sql, -1, &s, NULL) != SQLITE_OK) {
        rc = sq_fail_db(r.c->db, "counting conversations");
        goto out;
    }
    sq_bind_text(s, 1, task_id);
    sq_bind_text(s, 2, model_name);
    *total = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    sqlite3_finalize(s);
    snprintf(sql, sizeof(sql),
             "SELECT " CONV_COLS " FROM llm_conversations c %s ORDER BY c.started_at DESC, "
             "c.seq DESC LIMIT ?3 OFFSET ?4", where);
    if (sqlite3_prepare_v2(r.c->db, sql, -1, &s, NULL) != SQLITE_OK) {
        s = NULL;
        rc = sq_fail_db(r.c->db, "listing conversations");
        goto out;
    }
    sq_bind_text(s, 1, task_id);
    sq_bind_text(s, 2, model_name);
    sqlite3_bind_int64(s, 3, limit);
    sqlite3_bind_int64(s, 4, offset);
    while (rc == 0 && sqlite3_step(s) == SQLITE_ROW) {
        json_t *o = row_conversation(s);
        if (!o || json_array_append_new(arr, o))
            rc = ERR_NOMEM;
    }
    if (rc == 0) {
        *items = arr;
        arr = NULL;
    }
out:
    sqlite3_finalize(s);
    json_decref(arr);
    sq_rd_put(&r);
    return rc;
}

int sq_conversation_get(struct store *st, const char *id, bool with_messages,
                        json_t **out)
{
    struct rd r = sq_rd_get(st);
    sqlite3_stmt *s = NULL;
    json_t *o = NULL;
    int rc;

    if (sqlite3_prepare_v2(r.c->db, "SELECT " CONV_COLS " FROM llm_conversations c "
                                    "WHERE c.id = ?1", -1, &s, NULL) != SQLITE_OK) {
        rc = sq_fail_db(r.c->db, "reading a conversation");
        goto out;
    }
    sq_bind_text(s, 1, id);
    if (sqlite3_step(s) != SQLITE_ROW) {
        rc = ERR_NOTFOUND;
        goto out;
    }
    o = row_conversation(s);
    rc = o ? 0 : ERR_NOMEM;
    if (rc == 0 && with_messages)
        rc = load_messages(r.c, sqlite3_column_int64(s, 0), o);
    if (rc == 0) {
        *out = o;
        o = NULL;
    }
out:
    sqlite3_finalize(s);
    json_decref(o);
    sq_rd_put(&r);
    return rc;
}

int sq_task_conversations(struct store *st, const char *task_id, json_t **out)
{
    struct rd r = sq_rd_get(st);
    sqlite3_stmt *s = NULL;
    json_t *arr = json_array();
    int rc = 0;

    if (!arr) {
        rc = ERR_NOMEM;
        goto out;
    }
    if (!(s = sq_stmt(r.c, Q_TASK_CONVS))) {
        rc = sq_fail_db(r.c->db, "reading conversations");
        goto out;
    }
    sq_bind_text(s, 1, task_id);
    while (rc == 0 && sqlite3_step(s) == SQLITE_ROW) {
        json_t *o = row_conversation(s);
        if (!o || json_array_append_new(arr, o)) {
            rc = ERR_NOMEM;
            break;
        }
        rc = load_messages(r.c, sqlite3_column_int64(s, 0), o);
    }
    if (rc == 0) {
        *out = arr;
        arr = NULL;
    }
out:
    sq_done(s);
    json_decref(arr);
    sq_rd_put(&r);
    return rc;
}

int sq_conversation_stats(struct store *st, json_t **out)
{
    struct rd r = sq_rd_get(st);
    sqlite3_stmt *s = NULL;
    json_t *by_model = json_object(), *o = NULL;
    int64_t total = 0, tokens = 0, ok = 0;
    double avg = 0;
    int rc = 0;

    if (!by_model) {
        rc = ERR_NOMEM;
        goto out;
    }
    if (sqlite3_prepare_v2(r.c->db,
                           "SELECT count(*), COALESCE(avg(total_messages), 0), "
                           "COALESCE(sum(total_tokens), 0), COALESCE(sum(json_extract(metadata, "
                           "'$.success') = 1), 0) FROM llm_conversations", -1, &s,
                           NULL) != SQLITE_OK ||
        sqlite3_step(s) != SQLITE_ROW) {
        rc = sq_fail_db(r.c->db, "conversation stats");
        goto out;
    }
    total = sqlite3_column_int64(s, 0);
    avg = sqlite3_column_double(s, 1);
    tokens = sqlite3_column_int64(s, 2);
    ok = sqlite3_column_int64(s, 3);
    sqlite3_finalize(s);
    s = NULL;
    if (sqlite3_prepare_v2(r.c->db, "SELECT model_name, count(*) FROM llm_conversations "
                                    "WHERE model_name IS NOT NULL GROUP BY model_name", -1, &s,
                           NULL) != SQLITE_OK) {
        rc = sq_fail_db(r.c->db, "conversation stats");
        goto out;
    }
    while (sqlite3_step(s) == SQLITE_ROW)
        json_object_set_new(by_model, (const char *)sqlite3_column_text(s, 0),
                            json_integer(sqlite3_column_int64(s, 1)));
    o = json_pack("{s:I, s:O, s:f, s:I, s:f, s:I}", "total_conversations", (json_int_t)total,
                  "conversations_by_model", by_model, "avg_messages_per_conversation", avg,
                  "total_tokens_consumed", (json_int_t)tokens, "success_rate",
                  total ? (double)ok / (double)total : 0.0, "successful_conversations",
                  (json_int_t)ok);
    if (!o)
        rc = ERR_NOMEM;
    *out = o;
out:
    sqlite3_finalize(s);
    json_decref(by_model);
    sq_rd_put(&r);
    return rc;
}
