/* store/conversations: LLM conversations and their messages, written once for both
 * backends (store/db.h), but for inserting messages (each backend's insert_messages,
 * in sqlite/conversations.c and pg/conversations.c): PostgreSQL finds or makes a
 * conversation with one upsert and counts a message in the statement that inserts it;
 * SQLite looks the conversation up, makes it when missing, and updates its counts
 * apart, inside its write transaction. */
#include "store/db.h"
#include "core/err.h"

#define CONV_COLS_SQ                                                                       \
    "c.seq, c.id, c.task_id, c.session_id, c.model_name, c.model_config, c.started_at, "    \
    "c.ended_at, c.total_messages, c.total_tokens, c.metadata, c.attempt"
#define CONV_COLS_PG                                                                       \
    "c.seq, c.id, c.task_id, c.session_id, c.model_name, c.model_config::text, "            \
    "te_us(c.started_at), te_us(c.ended_at), c.total_messages, c.total_tokens, "            \
    "c.metadata::text, c.attempt"
#define CONV_WHERE_SQ "WHERE (?1 IS NULL OR c.task_id = ?1) AND (?2 IS NULL OR c.model_name = ?2)"
#define CONV_WHERE_PG                                                                      \
    "WHERE ($1::uuid IS NULL OR c.task_id = $1::uuid) AND ($2::text IS NULL OR "            \
    "c.model_name = $2)"

enum { C_COUNT, C_PAGE, C_BY_ID, C_OF_TASK, C_MESSAGES, C_STATS, C_BY_MODEL, C_N };

static const struct db_stmt conv_q[C_N] = {
    [C_COUNT] = {"counting conversations",
                 "SELECT count(*) FROM llm_conversations c " CONV_WHERE_SQ,
                 "SELECT count(*) FROM llm_conversations c " CONV_WHERE_PG},
    [C_PAGE] = {"listing conversations",
                "SELECT " CONV_COLS_SQ " FROM llm_conversations c " CONV_WHERE_SQ " ORDER BY "
                "c.started_at DESC, c.seq DESC LIMIT ?3 OFFSET ?4",
                "SELECT " CONV_COLS_PG " FROM llm_conversations c " CONV_WHERE_PG " ORDER BY "
                "c.started_at DESC, c.seq DESC LIMIT $3 OFFSET $4"},
    [C_BY_ID] = {"reading a conversation",
                 "SELECT " CONV_COLS_SQ " FROM llm_conversations c WHERE c.id = ?1",
                 "SELECT " CONV_COLS_PG " FROM llm_conversations c WHERE c.id = $1"},
    [C_OF_TASK] = {"reading conversations",
                   "SELECT " CONV_COLS_SQ " FROM llm_conversations c WHERE c.task_id = ?1 "
                   "ORDER BY c.seq",
                   "SELECT " CONV_COLS_PG " FROM llm_conversations c WHERE c.task_id = $1 "
                   "ORDER BY c.seq"},
    [C_MESSAGES] = {"reading messages",
                    "SELECT ts, role, content, step, metadata FROM llm_messages "
                    "WHERE conversation_seq = ?1 ORDER BY id",
                    "SELECT te_us(ts), role, content::text, step, metadata::text FROM "
                    "llm_messages WHERE conversation_seq = $1 ORDER BY id"},
    [C_STATS] = {"conversation stats",
                 "SELECT count(*), COALESCE(avg(total_messages), 0), "
                 "COALESCE(sum(total_tokens), 0), COALESCE(sum(json_extract(metadata, "
                 "'$.success') = 1), 0) FROM llm_conversations",
                 "SELECT count(*), COALESCE(avg(total_messages), 0), "
                 "COALESCE(sum(total_tokens), 0), count(*) FILTER (WHERE metadata->'success' = "
                 "'true') FROM llm_conversations"},
    [C_BY_MODEL] = DB_SQL("conversation stats",
                          "SELECT model_name, count(*) FROM llm_conversations "
                          "WHERE model_name IS NOT NULL GROUP BY model_name"),
};

/* The context of append_body. */
struct append {
    const char *task_id;
    const struct msg_entry *e;
    size_t n;
};

static int append_body(struct db_conn *c, void *ctx)
{
    struct append *x = ctx;

    return db_insert_messages(c, x->task_id, x->e, x->n);
}

int db_messages_append(struct store *st, const char *task_id, const struct msg_entry *e,
                       size_t n)
{
    struct append x = {task_id, e, n};

    return n ? db_in_write(st, append_body, &x) : 0;
}

/* Sets conv's "messages" to the messages of conversation seq, read on conn (a
 * struct db_conn; for rows_take_convs). */
static int add_messages(void *conn, int64_t seq, json_t *conv)
{
    struct rows_array a = {.build = rows_message};
    int rc = db_take(conn, &conv_q[C_MESSAGES], &DB_I(seq), 1, rows_take_array, &a);

    if (rc == 0 && json_object_set_new(conv, "messages", a.v))
        return ERR_NOMEM; /* set_new took a.v */
    return rc;
}

int db_conversations_list(struct store *st, const char *task_id, const char *model_name,
                          int64_t limit, int64_t offset, json_t **items, int64_t *total)
{
    const struct db_arg args[4] = {DB_T(task_id), DB_T(model_name), DB_I(limit), DB_I(offset)};

    return db_read_page(st, &conv_q[C_COUNT], 2, &conv_q[C_PAGE], args, 4, rows_conversation,
                        items, total);
}

/* The context of convs_body: statement q for key, the conversations into x. */
struct convs {
    int q;
    const char *key;
    struct rows_convs x;
};

static int convs_body(struct db_conn *c, void *ctx)
{
    struct convs *r = ctx;

    r->x.conn = c;
    return db_take(c, &conv_q[r->q], &DB_T(r->key), 1, rows_take_convs, &r->x);
}

/* The conversations q reads for key (with one, the first: ERR_NOTFOUND when none),
 * with their messages when asked. */
static int read_convs(struct store *st, int q, const char *key, bool one, bool with_messages,
                      json_t **out)
{
    struct convs r = {q, key, {add_messages, NULL, one, with_messages, NULL}};
    int rc = db_on_read(st, convs_body, &r);

    return rows_give(rc, r.x.v, out);
}

int db_conversation_get(struct store *st, const char *id, bool with_messages, json_t **out)
{
    return read_convs(st, C_BY_ID, id, true, with_messages, out);
}

int db_task_conversations(struct store *st, const char *task_id, json_t **out)
{
    return read_convs(st, C_OF_TASK, task_id, false, true, out);
}

/* The context of stats_body. */
struct stats {
    struct rows_conv_totals t;
    json_t *by_model;
};

static int stats_body(struct db_conn *c, void *ctx)
{
    struct stats *x = ctx;
    int rc = db_take(c, &conv_q[C_STATS], NULL, 0, rows_take_conv_totals, &x->t);

    return rc == 0 ? db_take(c, &conv_q[C_BY_MODEL], NULL, 0, rows_take_by_model, x->by_model)
                   : rc;
}

int db_conversation_stats(struct store *st, json_t **out)
{
    struct stats x = {{0}, json_object()};
    int rc = x.by_model ? db_on_read(st, stats_body, &x) : ERR_NOMEM;

    if (rc == 0) {
        *out = rows_conversation_stats(x.t.total, x.t.avg_messages, x.t.tokens, x.t.successful,
                                       x.by_model);
        rc = *out ? 0 : ERR_NOMEM;
    }
    json_decref(x.by_model);
    return rc;
}
