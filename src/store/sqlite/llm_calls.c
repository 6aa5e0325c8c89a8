/* store/sqlite/llm_calls: the LLM gateway's calls. */
#include "store/sqlite/sqlite_int.h"
#include "core/err.h"


#define LLM_CALL_COLS                                                                      \
    "id, task_id, attempt, started_at, latency_ms, first_byte_ms, status, stream, cut, "    \
    "upstream, model, finish_reason, prompt_tokens, completion_tokens, error, request, "    \
    "response"

enum { LC_INSERT, LC_OF_TASK, LC_N };

static const struct sq_query llm_q[LC_N] = {
    [LC_INSERT] = {"recording an LLM call",
                   "INSERT OR IGNORE INTO llm_calls (" LLM_CALL_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, "
                   "?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"},
    [LC_OF_TASK] = {"reading LLM calls",
                    "SELECT " LLM_CALL_COLS " FROM llm_calls WHERE task_id = ?1 "
                    "ORDER BY started_at, seq"},
};

/* A count or time, or NULL when it was not reported (< 0). */
#define OR_NULL(v, arg) ((v) < 0 ? SQ_T(NULL) : (arg))

int sq_llm_call_insert(struct store *st, const struct llm_call_rec *rec)
{
    const struct sq_arg a[17] = {
        SQ_T(rec->id), SQ_T(rec->task_id), SQ_I(rec->attempt), SQ_I(rec->started_at),
        SQ_R(rec->latency_ms), OR_NULL(rec->first_byte_ms, SQ_R(rec->first_byte_ms)),
        SQ_I(rec->status), SQ_I(rec->stream), SQ_I(rec->cut), SQ_T(rec->upstream),
        SQ_T(rec->model), SQ_T(rec->finish_reason), OR_NULL(rec->prompt_tokens, SQ_I(rec->prompt_tokens)),
        OR_NULL(rec->completion_tokens, SQ_I(rec->completion_tokens)), SQ_T(rec->error), SQ_J(rec->request),
        SQ_J(rec->response)};
    int changed = 0;
    int rc = sq_write(st, &llm_q[LC_INSERT], a, 17, &changed);

    /* Ignored only when the id is there: the call is recorded already. */
    return rc == 0 && changed == 0 ? ERR_CONFLICT : rc;
}

int sq_llm_calls(struct store *st, const char *task_id, json_t **out)
{
    return sq_read(st, &llm_q[LC_OF_TASK], &SQ_T(task_id), 1, rows_llm_call, out);
}
