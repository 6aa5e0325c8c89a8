/* store/pg/llm_calls: the LLM gateway's calls. */
#include "store/pg/pg_int.h"
#include "core/err.h"

#include <stdio.h>
#include <stdlib.h>

#define LLM_CALL_COLS                                                                      \
    "id, task_id, attempt, started_at, latency_ms, first_byte_ms, status, stream, cut, "    \
    "upstream, model, finish_reason, prompt_tokens, completion_tokens, error, request, "    \
    "response"

enum { LC_INSERT, LC_OF_TASK, LC_N };

static const struct pg_query llm_q[LC_N] = {
    [LC_INSERT] = {"recording an LLM call",
                   "INSERT INTO llm_calls (" LLM_CALL_COLS ") VALUES ($1, $2, $3, te_ts($4), $5, "
                   "$6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16::json, $17::json) "
                   "ON CONFLICT (id) DO NOTHING"},
    [LC_OF_TASK] = {"reading LLM calls",
                    "SELECT id, task_id, attempt, te_us(started_at), latency_ms, first_byte_ms, "
                    "status, stream, cut, upstream, model, finish_reason, prompt_tokens, "
                    "completion_tokens, error, request::text, response::text FROM llm_calls "
                    "WHERE task_id = $1 ORDER BY started_at, seq"},
};

/* A real as a text parameter (NULL when negative: not measured). */
static const char *real(char buf[32], double v)
{
    if (v < 0)
        return NULL;
    snprintf(buf, 32, "%.3f", v);
    return buf;
}

int pg_llm_call_insert(struct store *st, const struct llm_call_rec *rec)
{
    struct num attempt, started, status, prompt, completion;
    char latency[32], first[32];
    bool ok_req = true, ok_resp = true;
    char *req = pg_json_text(rec->request, &ok_req), *resp = pg_json_text(rec->response, &ok_resp);
    const char *v[17] = {
        rec->id, rec->task_id, num(&attempt, rec->attempt), num(&started, rec->started_at),
        real(latency, rec->latency_ms), real(first, rec->first_byte_ms), num(&status, rec->status),
        rec->stream ? "true" : "false", rec->cut ? "true" : "false", rec->upstream, rec->model,
        rec->finish_reason,
        rec->prompt_tokens < 0 ? NULL : num(&prompt, rec->prompt_tokens),
        rec->completion_tokens < 0 ? NULL : num(&completion, rec->completion_tokens),
        rec->error, req ? req : "null", resp};
    int changed = 0, rc = ok_req && ok_resp ? 0 : ERR_NOMEM;

    if (rc == 0)
        rc = pg_write(st, &llm_q[LC_INSERT], 17, v, &changed);
    free(req);
    free(resp);
    return rc == 0 && changed == 0 ? ERR_CONFLICT : rc;
}

int pg_llm_calls(struct store *st, const char *task_id, json_t **out)
{
    const char *v[1] = {task_id};

    return pg_read(st, &llm_q[LC_OF_TASK], 1, v, rows_llm_call, out);
}
