/* store/pg/conversations: appending LLM messages, one statement for each run of a
 * batch's messages that share a session: it finds or makes their conversation, adds
 * their counts to it and inserts them (from arrays, unnest()), where it was one upsert
 * and then one statement a message. Reading conversations is written once, in
 * store/conversations.c. */
#include "store/pg/pg_int.h"
#include "core/buf.h"
#include "core/err.h"
#include "model/proto.h"
#include "core/uuidgen.h"

#include <stdlib.h>
#include <string.h>

/* The messages ($4..$10 arrays) and their conversation ($1 a new id, $2 the task, $3 the
 * session), as the old one-message-at-a-time statements left its figures: started_at
 * the first message's time, ended_at the last's, total_tokens NULL until a message counts
 * tokens, model_name the first model named. Two CTEs (x, c), then the INSERT. */
#define MSGS_CTES                                                                         \
    "x AS (SELECT * FROM unnest($4::bigint[], $5::text[], $6::text[], $7::int[], "        \
    "$8::text[], $9::bigint[], $10::text[]) WITH ORDINALITY AS x(ts, role, content, "     \
    "step, meta, tokens, model, i)), c AS (INSERT INTO llm_conversations (id, task_id, "  \
    "session_id, model_config, started_at, attempt, total_messages, total_tokens, "       \
    "ended_at, model_name) SELECT $1, $2, $3, COALESCE(t.parameters->'agent_config', "    \
    "'{}'), te_ts((SELECT ts FROM x WHERE i = 1)), COALESCE(t.attempt, 1), (SELECT "      \
    "count(*) FROM x), (SELECT sum(tokens) FROM x), te_ts((SELECT ts FROM x ORDER BY i "  \
    "DESC LIMIT 1)), (SELECT model FROM x WHERE model IS NOT NULL ORDER BY i LIMIT 1) "   \
    "FROM (SELECT 1) one LEFT JOIN tasks t ON t.id = $2 ON CONFLICT (task_id, "           \
    "session_id, attempt) DO UPDATE SET total_messages = llm_conversations.total_messages " \
    "+ EXCLUDED.total_messages, total_tokens = CASE WHEN EXCLUDED.total_tokens IS NULL "  \
    "THEN llm_conversations.total_tokens ELSE COALESCE(llm_conversations.total_tokens, "  \
    "0) + EXCLUDED.total_tokens END, ended_at = EXCLUDED.ended_at, model_name = "         \
    "COALESCE(llm_conversations.model_name, EXCLUDED.model_name) RETURNING seq)"
#define MSGS_INSERT                                                                       \
    "INSERT INTO llm_messages (conversation_seq, ts, role, content, step, metadata) "     \
    "SELECT c.seq, te_ts(x.ts), x.role, x.content::jsonb, x.step, x.meta::jsonb FROM c, " \
    "x ORDER BY x.i"

static const struct pg_query msgs_insert = {"inserting messages",
                                            "WITH " MSGS_CTES " " MSGS_INSERT};

/* A session's answer ($11 step, $12 observation, $13 done, $14 reward, $15 results,
 * $16 now) with the step's messages, one statement (store/sessions.c's S_ANSWER with the
 * messages before it; the same notification). */
static const struct pg_query answer_insert = {
    "storing an observation",
    "WITH " MSGS_CTES ", m AS (" MSGS_INSERT "), u AS (UPDATE sessions SET answered = $11, "
    "observation = $12, done = $13, reward = $14, results = $15::jsonb, state = CASE WHEN "
    "$13 THEN 'done' ELSE state END, last_activity_at = $16 WHERE task_id = $2 AND step = "
    "$11 RETURNING 1) SELECT pg_notify('taskexec_session', 'o:' || $2::text) FROM u"};

enum { A_TS, A_ROLE, A_CONTENT, A_STEP, A_META, A_TOKENS, A_MODEL, N_ARRAYS };

/* Adds one message to the arrays. */
static int add_message(struct buf *a, const struct msg_entry *e)
{
    json_t *m = e->msg, *step = json_object_get(m, "step"), *meta = json_object_get(m, "metadata");
    json_t *model = json_object_get(meta, "model"), *role = json_object_get(m, "role");
    int64_t tokens = proto_message_tokens(meta);
    char *content = json_dumps(json_object_get(m, "content"), JSON_COMPACT | JSON_ENCODE_ANY);
    char *metatext = meta ? json_dumps(meta, JSON_COMPACT) : NULL;
    struct num x;
    int rc = 0;

    if (pg_array_add(&a[A_TS], num(&x, e->ts), false) < 0 ||
        pg_array_add(&a[A_ROLE], json_string_value(role), !json_is_string(role)) < 0 ||
        pg_array_add(&a[A_CONTENT], content ? content : "null", false) < 0 ||
        pg_array_add(&a[A_STEP], json_is_integer(step) ? num(&x, json_integer_value(step)) : "",
                     !json_is_integer(step)) < 0 ||
        pg_array_add(&a[A_META], metatext ? metatext : "{}", false) < 0 ||
        pg_array_add(&a[A_TOKENS], tokens >= 0 ? num(&x, tokens) : "", tokens < 0) < 0 ||
        pg_array_add(&a[A_MODEL], json_string_value(model), !json_is_string(model)) < 0)
        rc = ERR_NOMEM;
    free(content);
    free(metatext);
    return rc;
}

/* The values of answer_insert's $11..$16. */
struct answer_vals {
    const char *v[6];
    char *results;  /* owned: results as JSON text */
    struct num step, done, now;
};

/* The n messages of session e[0..n) in one statement, with the answer when one is given. */
static int insert_run(struct pgconn *pc, const char *task_id, const char *session,
                      const struct msg_entry *e, size_t n, const struct answer_vals *ans)
{
    struct buf a[N_ARRAYS], *all[N_ARRAYS];
    char id[TASK_ID_LEN + 1];
    int rc;

    for (int k = 0; k < N_ARRAYS; k++)
        all[k] = &a[k];
    rc = pg_arrays_open(all, N_ARRAYS);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = add_message(a, &e[i]);
    if (rc == 0)
        rc = pg_arrays_close(all, N_ARRAYS);
    if (rc == 0) {
        const char *v[3 + N_ARRAYS + 6] = {id, task_id, session};
        for (int k = 0; k < N_ARRAYS; k++)
            v[3 + k] = a[k].data;
        for (int k = 0; ans && k < 6; k++)
            v[3 + N_ARRAYS + k] = ans->v[k];
        uuidgen(id);
        PQclear(ans ? pg_run(pc, &answer_insert, 3 + N_ARRAYS + 6, v, &rc)
                    : pg_run(pc, &msgs_insert, 3 + N_ARRAYS, v, &rc));
    }
    for (int k = 0; k < N_ARRAYS; k++)
        buf_reset(&a[k]);
    return rc;
}

static const char *session_of(const struct msg_entry *e, const char *task_id)
{
    json_t *sid = json_object_get(e->msg, "session_id");

    return json_is_string(sid) ? json_string_value(sid) : task_id;
}

/* The end of the run of e[i..n) that shares e[i]'s session. */
static size_t run_end(const struct msg_entry *e, size_t i, size_t n, const char *task_id)
{
    const char *session = session_of(&e[i], task_id);
    size_t j = i + 1;

    while (j < n && !strcmp(session_of(&e[j], task_id), session))
        j++;
    return j;
}

int pg_insert_messages(struct db_conn *dc, const char *task_id, const struct msg_entry *e,
                       size_t n)
{
    struct pgconn *pc = pg_conn(dc);
    int rc = 0;

    /* A run's messages mostly share one conversation: one statement each such run. */
    for (size_t i = 0, j; rc == 0 && i < n; i = j) {
        j = run_end(e, i, n, task_id);
        rc = insert_run(pc, task_id, session_of(&e[i], task_id), &e[i], j - i, NULL);
    }
    return rc;
}

int pg_messages_append(struct store *st, const char *task_id, const struct msg_entry *e,
                       size_t n)
{
    struct pgconn *pc;
    int rc;

    if (!n || run_end(e, 0, n, task_id) != n)
        return db_messages_append(st, task_id, e, n);
    pc = pg_conn_get(P(st));
    rc = insert_run(pc, task_id, session_of(&e[0], task_id), e, n, NULL);
    pg_conn_put(P(st), pc);
    return rc;
}

int pg_session_answer(struct store *st, const char *task_id, int step, json_t *answer,
                      const struct msg_entry *msgs, size_t n_msgs, int64_t now)
{
    json_t *reward = json_object_get(answer, "reward"), *res = json_object_get(answer, "results");
    struct answer_vals x = {.results = NULL};
    struct pgconn *pc;
    char rbuf[32];
    int rc;

    /* The common case, a step's messages all of the session, is one statement; the others
     * (none: one statement too; several sessions) are the transaction written once. */
    if (!n_msgs || run_end(msgs, 0, n_msgs, task_id) != n_msgs)
        return db_session_answer(st, task_id, step, answer, msgs, n_msgs, now);
    if (res && !json_is_null(res) && !(x.results = json_dumps(res, JSON_COMPACT | JSON_ENCODE_ANY)))
        return ERR_NOMEM;
    snprintf(rbuf, sizeof(rbuf), "%.17g", json_number_value(reward));
    x.v[0] = num(&x.step, step);
    x.v[1] = json_string_value(json_object_get(answer, "observation"));
    x.v[2] = num(&x.done, json_is_true(json_object_get(answer, "done")));
    x.v[3] = json_is_number(reward) ? rbuf : NULL;
    x.v[4] = x.results;
    x.v[5] = num(&x.now, now);
    pc = pg_conn_get(P(st));
    rc = insert_run(pc, task_id, session_of(&msgs[0], task_id), msgs, n_msgs, &x);
    pg_conn_put(P(st), pc);
    free(x.results);
    return rc;
}
