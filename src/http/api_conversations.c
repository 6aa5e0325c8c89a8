/* api_conversations: the llm-conversations routes of the original implementation. */
#include "http/api.h"
#include "core/err.h"

#include <string.h>

int api_conv_list(struct request *req)
{
    struct store *st = req->srv->store;
    const char *task_id = api_query(req, "task_id"), *model = api_query(req, "model_name");
    long long page, page_size, limit, offset;
    json_t *items = NULL, *o;
    int64_t total = 0;
    bool paged;
    int rc;

    if (task_id && !api_valid_uuid(task_id))
        return api_invalid_field(req, "task_id", "must be a UUID");
    if (api_query_int(req, "page", 1, 100000000, 1, &page) < 0 ||
        api_query_int(req, "page_size", 1, 1000, 20, &page_size) < 0 ||
        api_query_int(req, "limit", 1, 1000, 20, &limit) < 0 ||
        api_query_int(req, "offset", 0, INT64_MAX / 2, 0, &offset) < 0)
        return 0;
    paged = api_query(req, "page") || api_query(req, "page_size") || !api_query(req, "limit");
    if (paged) {
        limit = page_size;
        offset = (page - 1) * page_size;
    }
    rc = store_conversations_list(st, task_id, model, limit, offset, &items, &total);
    if (rc < 0)
        return api_reply_error(req, rc, "the conversations");
    o = json_pack("{s:o, s:I, s:I, s:I}", "conversations", items, "total", (json_int_t)total,
                  "limit", (json_int_t)limit, "offset", (json_int_t)offset);
    if (o && paged) {
        json_object_set_new(o, "page", json_integer(page));
        json_object_set_new(o, "page_size", json_integer(page_size));
    }
    return api_reply(req, 200, o);
}

int api_conv_stats(struct request *req)
{
    struct store *st = req->srv->store;
    json_t *o = NULL;
    int rc = store_conversation_stats(st, &o);

    return rc < 0 ? api_reply_error(req, rc, "the statistics") : api_reply(req, 200, o);
}

/* The original answers a bare list of summaries here. */
int api_conv_for_task(struct request *req)
{
    struct store *st = req->srv->store;
    struct task *t = NULL;
    json_t *items = NULL;
    int64_t total;
    int rc;

    if (!api_valid_uuid(req->params[0]))
        return api_invalid_field(req, "task_id", "must be a UUID");
    rc = store_task_get(st, req->params[0], &t);
    task_free(t);
    if (rc < 0) {
        api_lookup_error(req, rc, "task", req->params[0]);
        return 0;
    }
    rc = store_conversations_list(st, req->params[0], NULL, 100000, 0, &items, &total);
    return rc < 0 ? api_reply_error(req, rc, "the conversations") : api_reply(req, 200, items);
}

static int load(struct request *req, bool with_messages, json_t **out)
{
    struct store *st = req->srv->store;
    int rc;

    if (!api_valid_uuid(req->params[0])) {
        api_invalid_field(req, "conversation_id", "must be a UUID");
        return ERR_INVALID;
    }
    rc = store_conversation_get(st, req->params[0], with_messages, out);
    return api_lookup_error(req, rc, "conversation", req->params[0]);
}

int api_conv_get(struct request *req)
{
    json_t *o = NULL;

    if (load(req, true, &o) < 0)
        return 0;
    return api_reply(req, 200, o);
}

int api_conv_messages(struct request *req)
{
    const char *role = api_query(req, "role");
    json_t *conv = NULL, *msgs, *out, *m;
    long long limit;
    size_t i;

    if (api_query_int(req, "limit", 1, 100000, 100000, &limit) < 0)
        return 0;
    if (load(req, true, &conv) < 0)
        return 0;
    msgs = json_object_get(conv, "messages");
    out = json_array();
    json_array_foreach(msgs, i, m) {
        if ((long long)json_array_size(out) >= limit)
            break;
        if (!role || !strcmp(json_string_value(json_object_get(m, "role")), role))
            json_array_append(out, m);
    }
    json_t *o = json_pack("{s:s, s:O, s:O, s:I, s:o}", "conversation_id", req->params[0],
                          "task_id", json_object_get(conv, "task_id"), "session_id",
                          json_object_get(conv, "session_id"), "total_messages",
                          (json_int_t)json_array_size(out), "messages", out);
    json_decref(conv);
    return api_reply(req, 200, o);
}
