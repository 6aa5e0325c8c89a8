/* export: the streamed export (see export.h).
 *
 * DESIGN
 * A producer walks the tasks in queue order with keyset paging (50 at a time), and for
 * each builds {"task","logs","conversations"}, hands it out, and forgets it, so memory
 * stays the size of one page and one task however many tasks there are.
 * json is {"exported_at", "format", "tasks":[…], "task_count"} (task_count comes last
 * because it is known last; the shape of the original export_task_data.py); jsonl is one
 * {"task","logs","conversations","llm_calls"} a line. Each conversation also carries "chat":
 * its messages as OpenAI chat messages ({"role","content"}), ready for a trainer; each
 * LLM call its request, response, token ids and logprobs (model/llm_call.h). */
#include "http/export.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/err.h"
#include "core/log.h"
#include "model/proto.h"
#include "service/gateway.h"

#include <stdlib.h>
#include <string.h>

#define PAGE 50
#define LOGS_MAX 1000000

enum phase { HEADER, ITEMS, FOOTER, DONE };

struct exporter {
    struct store *st;
    struct task_filter f;
    bool jsonl, logs, convs, llm;
    struct buf out;            /* produced, not yet handed out */
    size_t pos;
    enum phase phase;
    int64_t count;
    struct task_page page;
    size_t idx;
};

static void exporter_free(void *ctx)
{
    struct exporter *e = ctx;

    store_task_page_reset(&e->page);
    buf_reset(&e->out);
    free((char *)(uintptr_t)e->f.problem_id);
    free((char *)(uintptr_t)e->f.experiment_id);
    free(e);
}

/* Each conversation gains "chat": OpenAI chat messages, content always a string. */
static void add_chat(json_t *convs)
{
    json_t *c, *m;
    size_t i, j;

    json_array_foreach(convs, i, c) {
        json_t *chat = json_array();
        json_array_foreach(json_object_get(c, "messages"), j, m) {
            json_t *content = json_object_get(m, "content");
            char *text = json_is_string(content) ? NULL
                                                 : json_dumps(content, JSON_COMPACT | JSON_ENCODE_ANY);
            json_array_append_new(chat, json_pack("{s:O, s:s}", "role", json_object_get(m, "role"),
                                                  "content",
                                                  text ? text : json_string_value(content)));
            free(text);
        }
        json_object_set_new(c, "chat", chat);
    }
}

static int item(struct exporter *e, const struct task *t, json_t **out)
{
    json_t *o = json_pack("{s:o}", "task", task_to_json(t)), *v = NULL;
    int64_t total;
    int rc = o ? 0 : ERR_NOMEM;

    if (rc == 0 && e->logs) {
        rc = store_logs_list(e->st, t->id, LEVEL_DEBUG, LOGS_MAX, 0, &v, &total);
        if (rc == 0)
            json_object_set_new(o, "logs", v);
    }
    if (rc == 0 && e->convs) {
        rc = store_task_conversations(e->st, t->id, &v);
        if (rc == 0) {
            add_chat(v);
            json_object_set_new(o, "conversations", v);
        }
    }
    if (rc == 0 && e->llm) {
        rc = gateway_task_calls(e->st, t->id, true, &v);
        if (rc == 0)
            json_object_set_new(o, "llm_calls", v);
    }
    if (rc < 0)
        json_decref(o);
    else
        *out = o;
    return rc;
}

static int dump_to_buf(const char *p, size_t n, void *ud)
{
    return buf_append(ud, p, n) == 0 ? 0 : -1;
}

/* ,"llm_calls":[…] of a task, with token ids and logprobs (what a trainer exports for). */
static int append_llm_calls(struct exporter *e, const char *task_id)
{
    json_t *calls = NULL;
    int rc = gateway_task_calls(e->st, task_id, true, &calls);

    if (rc == 0)
        rc = buf_append(&e->out, ",\"llm_calls\":", 13);
    if (rc == 0 && json_dump_callback(calls, dump_to_buf, &e->out,
                                      JSON_COMPACT | JSON_REAL_PRECISION(10)) != 0)
        rc = ERR_NOMEM;
    json_decref(calls);
    return rc;
}

/* One item as text, its logs and conversations made by the database. */
static int item_text(struct exporter *e, const struct task *t)
{
    json_t *tj = task_to_json(t);
    int rc = tj ? 0 : ERR_NOMEM;

    if (rc == 0 && !e->jsonl && e->count)
        rc = buf_append(&e->out, ",", 1);
    if (rc == 0)
        rc = buf_append(&e->out, "{\"task\":", 8);
    if (rc == 0 && json_dump_callback(tj, dump_to_buf, &e->out,
                                      JSON_COMPACT | JSON_REAL_PRECISION(10)) != 0)
        rc = ERR_NOMEM;
    if (rc == 0)
        rc = store_export_extras(e->st, t->id, e->logs, e->convs, &e->out);
    if (rc == 0 && e->llm)
        rc = append_llm_calls(e, t->id);
    if (rc == 0)
        rc = buf_append(&e->out, e->jsonl ? "}\n" : "}", e->jsonl ? 2 : 1);
    json_decref(tj);
    if (rc == 0)
        e->count++;
    return rc;
}

/* Produces the next piece into e->out. < 0 on a database error. */
static int produce(struct exporter *e)
{
    char now[40];
    json_t *o = NULL;
    int rc;

    switch (e->phase) {
    case HEADER:
        e->phase = ITEMS;
        if (e->jsonl)
            return 0;
        clock_format(clock_now_us(), now, sizeof(now));
        return buf_appendf(&e->out, "{\"exported_at\":\"%s\",\"format\":\"taskexec-export-1\","
                           "\"tasks\":[", now);
    case ITEMS:
        if (e->idx == e->page.n) {
            int64_t last = e->page.n ? e->page.items[e->page.n - 1]->seq : e->f.after_seq;
            store_task_page_reset(&e->page);
            e->idx = 0;
            e->f.after_seq = last;
            rc = store_task_list(e->st, &e->f, &e->page);
            if (rc < 0)
                return rc;
            if (e->page.n == 0) {
                e->phase = FOOTER;
                return 0;
            }
        }
        if (store_exports_text(e->st))
            return item_text(e, e->page.items[e->idx++]);
        rc = item(e, e->page.items[e->idx++], &o);
        if (rc < 0)
            return rc;
        /* Dumped straight into the output buffer: no intermediate string, no format pass. */
        rc = !e->jsonl && e->count ? buf_append(&e->out, ",", 1) : 0;
        if (rc == 0 && json_dump_callback(o, dump_to_buf, &e->out,
                                          JSON_COMPACT | JSON_REAL_PRECISION(10)) != 0)
            rc = ERR_NOMEM;
        if (rc == 0 && e->jsonl)
            rc = buf_append(&e->out, "\n", 1);
        json_decref(o);
        e->count++;
        return rc;
    case FOOTER:
        e->phase = DONE;
        return e->jsonl ? 0 : buf_appendf(&e->out, "],\"task_count\":%lld}\n",
                                          (long long)e->count);
    case DONE:
        return 0;
    }
    return 0;
}

/* Fills as much of MHD's block as it can: one send per block, not one per task. */
static long exporter_read(void *ctx, char *dst, size_t max)
{
    struct exporter *e = ctx;
    size_t n = 0, k;

    while (n < max) {
        if (e->pos == e->out.len) {
            buf_consume(&e->out, e->out.len);
            e->pos = 0;
            if (e->phase == DONE)
                break;
            if (produce(e) < 0) {
                log_error("export: stopped after %lld tasks: the database failed",
                          (long long)e->count);
                return -1;
            }
            continue;
        }
        k = e->out.len - e->pos < max - n ? e->out.len - e->pos : max - n;
        memcpy(dst + n, e->out.data + e->pos, k);
        e->pos += k;
        n += k;
    }
    return (long)n; /* 0 only when done */
}

int api_export(struct request *req)
{
    const char *format = api_query(req, "format"), *status = api_query(req, "status");
    const char *since = api_query(req, "since"), *until = api_query(req, "until");
    const char *problem = api_query(req, "problem_id");
    const char *experiment = api_query(req, "experiment_id");
    struct exporter *e;
    struct api_stream *s;
    bool logs, convs, llm;

    if (format && strcmp(format, "json") && strcmp(format, "jsonl"))
        return api_invalid_field(req, "format", "must be json or jsonl");
    if (status && task_status_parse(status) < 0)
        return api_invalid_field(req, "status", "must be one of pending, running, completed, "
                                                 "failed, timeout, cancelled");
    if (experiment && !api_valid_uuid(experiment))
        return api_invalid_field(req, "experiment_id", "must be a UUID");
    if (api_query_bool(req, "include_logs", true, &logs) < 0 ||
        api_query_bool(req, "include_conversations", true, &convs) < 0 ||
        api_query_bool(req, "include_llm_calls", true, &llm) < 0)
        return 0;
    e = calloc(1, sizeof(*e));
    s = calloc(1, sizeof(*s));
    if (!e || !s) {
        free(e);
        free(s);
        return api_reply_error(req, ERR_NOMEM, "the export");
    }
    e->f = (struct task_filter){.status = status ? task_status_parse(status) : -1,
                                .oldest_first = true, .limit = PAGE, .no_total = true};
    if ((since && clock_parse(since, &e->f.since) < 0) ||
        (until && clock_parse(until, &e->f.until) < 0)) {
        free(e);
        free(s);
        return api_invalid_field(req, since ? "since" : "until", "must be an RFC 3339 time");
    }
    /* MHD's copies die with the request */
    e->f.problem_id = problem ? strdup(problem) : NULL;
    e->f.experiment_id = experiment ? strdup(experiment) : NULL;
    e->st = req->srv->store;
    e->jsonl = format && !strcmp(format, "jsonl");
    e->logs = logs;
    e->convs = convs;
    e->llm = llm;
    buf_init(&e->out, 1u << 30);
    s->ctx = e;
    s->read = exporter_read;
    s->free = exporter_free;
    req->stream = s;
    req->status = 200;
    req->content_type = e->jsonl ? "application/x-ndjson" : "application/json";
    return 0;
}
