/* api_common: reply helpers and input parsing shared by the handlers (see api.h). */
#include "http/api.h"
#include "core/err.h"
#include "core/log.h"

#include <ctype.h>
#include <errno.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *type_of(int status)
{
    switch (status) {
    case 400: return "bad_request";
    case 401: return "unauthorized";
    case 403: return "forbidden";
    case 404: return "not_found";
    case 405: return "method_not_allowed";
    case 409: return "conflict";
    case 413: return "payload_too_large";
    case 414: return "uri_too_long";
    case 422: return "validation_error";
    case 503: return "service_unavailable";
    default: return status >= 500 ? "internal_error" : "error";
    }
}

int api_reply(struct request *req, int status, json_t *body)
{
    json_decref(req->reply);
    free(req->reply_raw);
    req->reply_raw = NULL;
    req->status = status;
    req->reply = body;
    return 0;
}

int api_reply_text(struct request *req, int status, const char *content_type, char *body)
{
    free(req->reply_raw);
    req->reply_raw = body;
    req->content_type = content_type;
    req->status = status;
    return 0;
}

int api_fail(struct request *req, int status, const char *fmt, ...)
{
    char detail[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    return api_reply(req, status,
                     json_pack("{s:s, s:s, s:s}", "detail", detail, "type", type_of(status),
                               "request_id", req->request_id));
}

int api_reply_error(struct request *req, int rc, const char *what)
{
    switch (rc) {
    case ERR_NOTFOUND: return api_fail(req, 404, "%s was not found", what);
    case ERR_CONFLICT: return api_fail(req, 409, "%s conflicts with its current state", what);
    case ERR_FORBIDDEN: return api_fail(req, 403, "%s belongs to someone else", what);
    case ERR_INVALID: return api_fail(req, 422, "%s is not valid", what);
    case ERR_TOOBIG: return api_fail(req, 413, "%s is too large", what);
    case ERR_UNAVAILABLE:
    case ERR_STORE: return api_fail(req, 503, "the database is unavailable; try again");
    default: return api_fail(req, 500, "internal error (%s)", err_str(rc));
    }
}

int api_invalid(struct request *req, json_t *errors)
{
    json_t *first = json_array_get(errors, 0);
    char detail[512];

    snprintf(detail, sizeof(detail), "%s %s",
             json_string_value(json_object_get(first, "field")),
             json_string_value(json_object_get(first, "message")));
    if (json_array_size(errors) > 1)
        snprintf(detail + strlen(detail), sizeof(detail) - strlen(detail),
                 " (and %zu more problems)", json_array_size(errors) - 1);
    return api_reply(req, 422,
                     json_pack("{s:s, s:s, s:s, s:o}", "detail", detail, "type",
                               "validation_error", "request_id", req->request_id, "errors",
                               errors));
}

int api_invalid_field(struct request *req, const char *field, const char *message)
{
    return api_invalid(req, json_pack("[{s:s, s:s}]", "field", field, "message", message));
}

int api_lookup_error(struct request *req, int rc, const char *noun, const char *id)
{
    char what[64];

    if (rc == ERR_NOTFOUND) {
        api_fail(req, 404, "%s %s not found", noun, id);
    } else if (rc < 0) {
        snprintf(what, sizeof(what), "the %s", noun);
        api_reply_error(req, rc, what);
    }
    return rc;
}

int api_create_body(struct request *req, const char *mode, json_t **body)
{
    int rc = api_body_json(req, body);

    if (rc < 0)
        return rc;
    if (!*body) {
        api_invalid_field(req, "body", "is required: a JSON object with problem_id");
        return ERR_INVALID;
    }
    if (mode && !json_is_object(*body)) {
        json_decref(*body);
        *body = NULL;
        api_invalid_field(req, "body", "must be a JSON object");
        return ERR_INVALID;
    }
    if (mode)
        json_object_set_new(*body, "mode", json_string(mode));
    return 0;
}

int api_submit_body(struct request *req, json_t *body, const char *idempotency_key,
                    struct task **out, bool *created)
{
    json_t *errors = NULL;
    int rc = queue_submit(&req->srv->queue, body, idempotency_key, out, created, &errors);

    if (rc == ERR_INVALID)
        api_invalid(req, errors);
    else if (rc < 0)
        api_reply_error(req, rc, "the task");
    return rc;
}

int api_submit(struct request *req, const char *mode, struct task **out, bool *created)
{
    json_t *body = NULL;
    int rc = api_create_body(req, mode, &body);

    if (rc == 0)
        rc = api_submit_body(req, body, api_header(req, "Idempotency-Key"), out, created);
    json_decref(body);
    return rc;
}

const char *api_query(struct request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *api_header(struct request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

int api_query_int(struct request *req, const char *name, long long lo, long long hi,
                  long long def, long long *out)
{
    const char *v = api_query(req, name);
    char *end, msg[128];
    long long n;

    *out = def;
    if (!v)
        return 0;
    errno = 0;
    n = strtoll(v, &end, 10);
    if (errno || end == v || *end || n < lo || n > hi) {
        snprintf(msg, sizeof(msg), "must be an integer from %lld to %lld", lo, hi);
        api_invalid_field(req, name, msg);
        return ERR_INVALID;
    }
    *out = n;
    return 0;
}

int api_query_bool(struct request *req, const char *name, bool def, bool *out)
{
    const char *v = api_query(req, name);

    *out = def;
    if (!v)
        return 0;
    if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "True")) {
        *out = true;
    } else if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "False")) {
        *out = false;
    } else {
        api_invalid_field(req, name, "must be true or false");
        return ERR_INVALID;
    }
    return 0;
}

int api_body_json(struct request *req, json_t **out)
{
    json_error_t e;
    json_t *v;
    size_t i = 0;

    *out = NULL;
    while (i < req->body.len && isspace((unsigned char)req->body.data[i]))
        i++;
    if (i == req->body.len)
        return 0;
    v = json_loadb(req->body.data, req->body.len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &e);
    if (!v) {
        api_fail(req, 400, "malformed JSON body: %s (line %d, column %d)", e.text, e.line,
                 e.column);
        return ERR_INVALID;
    }
    *out = v;
    return 0;
}

bool api_valid_uuid(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (!isxdigit((unsigned char)s[i])) {
            return false;
        }
    }
    return true;
}
