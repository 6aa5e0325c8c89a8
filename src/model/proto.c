/* proto: parse executor output lines (see proto.h). */
#include "model/proto.h"
#include "core/err.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *const level_names[PROTO_N_LEVELS] = {"debug", "info", "warning", "error",
                                                         "critical"};

const char *proto_level_name(int level)
{
    return level >= 0 && level < PROTO_N_LEVELS ? level_names[level] : "info";
}

int proto_level_parse(const char *name)
{
    if (!name)
        return -1;
    if (!strcasecmp(name, "warn"))
        return LEVEL_WARNING;
    if (!strcasecmp(name, "fatal"))
        return LEVEL_CRITICAL;
    for (int i = 0; i < PROTO_N_LEVELS; i++)
        if (!strcasecmp(name, level_names[i]))
            return i;
    return -1;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    size_t len;
    unsigned cp;

    if (s[0] < 0x80)
        return s[0] ? 1 : 0;
    if ((s[0] & 0xe0) == 0xc0) {
        len = 2;
        cp = s[0] & 0x1f;
    } else if ((s[0] & 0xf0) == 0xe0) {
        len = 3;
        cp = s[0] & 0x0f;
    } else if ((s[0] & 0xf8) == 0xf0) {
        len = 4;
        cp = s[0] & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

char *proto_utf8_copy(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    char *out = malloc(len * 3 + 1), *w = out;
    size_t i = 0;

    if (!out)
        return NULL;
    while (i < len) {
        size_t k = utf8_seq(u + i, len - i);
        if (k) {
            memcpy(w, u + i, k);
            w += k;
            i += k;
        } else {
            memcpy(w, "\xef\xbf\xbd", 3);
            w += 3;
            i++;
        }
    }
    *w = '\0';
    return out;
}

static int plain_log(const char *line, size_t len, enum proto_stream stream, int level,
                     struct proto_event *ev)
{
    char *text = proto_utf8_copy(line, len);
    json_t *o;

    if (!text)
        return ERR_NOMEM;
    o = json_pack("{s:s, s:s%, s:{s:s}}", "level", level_names[level], "message", text,
                  strlen(text), "context", "stream",
                  stream == PROTO_STDERR ? "stderr" : "stdout");
    free(text);
    if (!o)
        return ERR_NOMEM;
    ev->kind = PROTO_LOG;
    ev->level = level;
    ev->obj = o;
    return 0;
}

static bool valid_role(const char *r)
{
    return !strcmp(r, "system") || !strcmp(r, "user") || !strcmp(r, "assistant") ||
           !strcmp(r, "tool");
}

/* {"type":"log",...} to {"level","message","context"}; false if malformed. */
static bool take_log(json_t *in, struct proto_event *ev)
{
    json_t *msg = json_object_get(in, "message"), *lvl = json_object_get(in, "level");
    json_t *ctx = json_object_get(in, "context");
    int level = LEVEL_INFO;

    if (!json_is_string(msg))
        return false;
    if (json_is_string(lvl)) {
        level = proto_level_parse(json_string_value(lvl));
        if (level < 0)
            level = LEVEL_INFO;
    }
    if (ctx && !json_is_object(ctx))
        return false;
    ev->obj = json_pack("{s:s, s:O, s:o}", "level", level_names[level], "message", msg,
                        "context", ctx ? json_incref(ctx) : json_object());
    ev->kind = PROTO_LOG;
    ev->level = level;
    return ev->obj != NULL;
}

/* {"type":"message",...}: role and content are kept as sent; every other field
 * (model, usage, tool calls, ...) goes into "metadata" untouched. */
static bool take_message(json_t *in, struct proto_event *ev)
{
    json_t *role = json_object_get(in, "role"), *step = json_object_get(in, "step");
    json_t *sid = json_object_get(in, "session_id"), *content = json_object_get(in, "content");
    json_t *meta, *o, *v;
    const char *key;

    if (!json_is_string(role) || !valid_role(json_string_value(role)))
        return false;
    if (step && !json_is_null(step) && !json_is_integer(step))
        return false;
    if (sid && !json_is_null(sid) && !json_is_string(sid))
        return false;
    meta = json_object();
    o = json_object();
    if (!meta || !o)
        goto fail;
    json_object_foreach(in, key, v) {
        if (!strcmp(key, "type") || !strcmp(key, "role") || !strcmp(key, "content") ||
            !strcmp(key, "step") || !strcmp(key, "session_id"))
            continue;
        if (!strcmp(key, "metadata") && json_is_object(v)) {
            if (json_object_update(meta, v))
                goto fail;
            continue;
        }
        if (json_object_set(meta, key, v))
            goto fail;
    }
    if (json_object_set(o, "role", role) ||
        json_object_set_new(o, "content", content ? json_incref(content) : json_string("")) ||
        json_object_set_new(o, "step", step ? json_incref(step) : json_null()) ||
        json_object_set_new(o, "session_id", sid ? json_incref(sid) : json_null()) ||
        json_object_set_new(o, "metadata", meta))
        goto fail;
    ev->kind = PROTO_MESSAGE;
    ev->obj = o;
    return true;
fail:
    json_decref(meta);
    json_decref(o);
    return false;
}

static bool take_rest(json_t *in, enum proto_kind kind, struct proto_event *ev)
{
    json_t *o = json_deep_copy(in);

    if (!o)
        return false;
    json_object_del(o, "type");
    ev->kind = kind;
    ev->obj = o;
    return true;
}

int proto_event_from_json(json_t *in, const char *type, struct proto_event *ev)
{
    json_t *t = json_object_get(in, "type");
    bool ok = false;

    memset(ev, 0, sizeof(*ev));
    if (!json_is_object(in))
        return ERR_INVALID;
    if (t && (!json_is_string(t) || strcmp(json_string_value(t), type)))
        return ERR_INVALID;
    if (!strcmp(type, "log"))
        ok = take_log(in, ev);
    else if (!strcmp(type, "message"))
        ok = take_message(in, ev);
    if (!ok) {
        memset(ev, 0, sizeof(*ev));
        return ERR_INVALID;
    }
    return 0;
}

int proto_parse_line(const char *line, size_t len, enum proto_stream stream,
                     struct proto_event *ev)
{
    json_t *in;
    const char *type;
    bool ok = false;

    memset(ev, 0, sizeof(*ev));
    while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' '))
        len--;
    if (stream == PROTO_STDOUT && len > 0 && line[0] == '{') {
        in = json_loadb(line, len, JSON_REJECT_DUPLICATES, NULL);
        if (json_is_object(in) && json_is_string(json_object_get(in, "type"))) {
            type = json_string_value(json_object_get(in, "type"));
            if (!strcmp(type, "log"))
                ok = take_log(in, ev);
            else if (!strcmp(type, "message"))
                ok = take_message(in, ev);
            else if (!strcmp(type, "result"))
                ok = json_is_boolean(json_object_get(in, "success")) &&
                     take_rest(in, PROTO_RESULT, ev);
            else if (!strcmp(type, "ready"))
                ok = take_rest(in, PROTO_READY, ev);
            else if (!strcmp(type, "observation"))
                ok = take_rest(in, PROTO_OBSERVATION, ev);
        }
        json_decref(in);
        if (ok)
            return 0;
        memset(ev, 0, sizeof(*ev));
    }
    return plain_log(line, len, stream, stream == PROTO_STDERR ? LEVEL_WARNING : LEVEL_INFO,
                     ev);
}

int64_t proto_message_tokens(json_t *metadata)
{
    static const char *const parts[] = {"prompt_tokens", "completion_tokens", "input_tokens",
                                        "output_tokens"};
    json_t *u = json_object_get(metadata, "usage"), *v;
    int64_t sum = 0;
    bool any = false;

    if (!json_is_object(u))
        return -1;
    v = json_object_get(u, "total_tokens");
    if (json_is_integer(v))
        return json_integer_value(v);
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        v = json_object_get(u, parts[i]);
        if (json_is_integer(v)) {
            sum += json_integer_value(v);
            any = true;
        }
    }
    return any ? sum : -1;
}
