/* store/llm_calls: the LLM gateway's calls, written once for both backends (store/db.h).
 * The request and answer are JSON text (PostgreSQL: json, not jsonb, so a model's
 * \u0000 is kept). */
#include "store/db.h"
#include "core/err.h"

#define LLM_CALL_COLS                                                                      \
    "id, task_id, attempt, started_at, latency_ms, first_byte_ms, status, stream, cut, "    \
    "upstream, model, finish_reason, prompt_tokens, completion_tokens, error, request, "    \
    "response"

static const struct db_stmt insert_q = {
    "recording an LLM call",
    "INSERT OR IGNORE INTO llm_calls (" LLM_CALL_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, "
    "?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    "INSERT INTO llm_calls (" LLM_CALL_COLS ") VALUES ($1, $2, $3, te_ts($4), $5, $6, $7, "
    "$8::int::boolean, $9::int::boolean, $10, $11, $12, $13, $14, $15, $16::json, $17::json) "
    "ON CONFLICT (id) DO NOTHING"};

static const struct db_stmt list_q = {
    "reading LLM calls",
    "SELECT " LLM_CALL_COLS " FROM llm_calls WHERE task_id = ?1 ORDER BY started_at, seq",
    "SELECT id, task_id, attempt, te_us(started_at), latency_ms, first_byte_ms, status, "
    "stream, cut, upstream, model, finish_reason, prompt_tokens, completion_tokens, error, "
    "request::text, response::text FROM llm_calls WHERE task_id = $1 ORDER BY started_at, "
    "seq"};

/* A count or time, or NULL when it was not reported (< 0). */
#define OR_NULL(v, arg) ((v) < 0 ? DB_NULL : (arg))

int db_llm_call_insert(struct store *st, const struct llm_call_rec *rec)
{
    const struct db_arg a[17] = {
        DB_T(rec->id), DB_T(rec->task_id), DB_I(rec->attempt), DB_I(rec->started_at),
        DB_R(rec->latency_ms), OR_NULL(rec->first_byte_ms, DB_R(rec->first_byte_ms)),
        DB_I(rec->status), DB_I(rec->stream), DB_I(rec->cut), DB_T(rec->upstream),
        DB_T(rec->model), DB_T(rec->finish_reason),
        OR_NULL(rec->prompt_tokens, DB_I(rec->prompt_tokens)),
        OR_NULL(rec->completion_tokens, DB_I(rec->completion_tokens)), DB_T(rec->error),
        DB_J(rec->request), DB_J(rec->response)};
    int changed = 0;
    int rc = db_write(st, &insert_q, a, 17, &changed);

    /* Ignored only when the id is there: the call is recorded already. */
    return rc == 0 && changed == 0 ? ERR_CONFLICT : rc;
}

int db_llm_calls(struct store *st, const char *task_id, json_t **out)
{
    return db_read(st, &list_q, &DB_T(task_id), 1, rows_llm_call, out);
}
