/* catalog: known problem ids (see catalog.h). */
#include "model/catalog.h"
#include "core/log.h"
#include "model/task.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Generated at build time from share/aiopslab-problems.txt. */
extern const char catalog_builtin[];

static const char *task_type(const char *id)
{
    static const char *const types[] = {"detection", "localization", "analysis", "mitigation"};

    for (size_t i = 0; i < 4; i++)
        if (strstr(id, types[i]))
            return types[i];
    return NULL;
}

/* One entry; application and namespace may be NULL (unknown). */
static int add(json_t *list, const char *id, const char *app, const char *ns)
{
    return json_array_append_new(list, json_pack("{s:s, s:s?, s:s?, s:s?}", "id", id,
                                                 "task_type", task_type(id), "application",
                                                 app, "namespace", ns));
}

static const char *field(char **cursor)
{
    char *f = *cursor + strspn(*cursor, " \t");
    size_t n = strcspn(f, " \t");

    *cursor = f + n + (f[n] != '\0');
    f[n] = '\0';
    return *f && strcmp(f, "-") ? f : NULL;
}

/* Lines "id [application [namespace]]", '-' for none, '#' comments. A bare id takes
 * the rest from known (the built-in table), when known is given. */
static int add_lines(json_t *list, char *text, const json_t *known)
{
    for (char *line = text, *next; line; line = next) {
        const char *id, *app, *ns;
        char *cur = line;

        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        line[strcspn(line, "\r#")] = '\0';
        id = field(&cur);
        app = field(&cur);
        ns = field(&cur);
        if (id && !app && known) {
            const json_t *e = catalog_find(known, id);
            app = json_string_value(json_object_get(e, "application"));
            ns = json_string_value(json_object_get(e, "namespace"));
        }
        if (id && add(list, id, app, ns) < 0)
            return -1;
    }
    return 0;
}

/* The built-in table (read off AIOpsLab's registry when it was generated). New
 * reference, NULL without memory. */
static json_t *builtin(void)
{
    json_t *list = json_array();
    char *text = strdup(catalog_builtin);

    if (!list || !text || add_lines(list, text, NULL) < 0) {
        json_decref(list);
        list = NULL;
    }
    free(text);
    return list;
}

json_t *catalog_load(const char *path)
{
    json_t *list, *known;
    char *text = NULL;
    size_t len = 0;
    FILE *f;

    if (!path || !*path)
        return builtin();
    f = fopen(path, "r");
    if (!f) {
        log_error("PROBLEMS_FILE %s cannot be read", path);
        return NULL;
    }
    if (getdelim(&text, &len, '\0', f) < 0) {
        free(text);
        text = strdup("");
    }
    fclose(f);
    list = json_array();
    known = builtin();
    if (!text || !list || !known || add_lines(list, text, known) < 0) {
        json_decref(list);
        list = NULL;
    }
    json_decref(known);
    free(text);
    return list;
}

json_t *catalog_from_list(const json_t *items)
{
    json_t *list = json_array(), *known = builtin(), *v;
    size_t i;

    if (!list || !known)
        goto fail;
    json_array_foreach(items, i, v) {
        const char *id = json_is_string(v) ? json_string_value(v)
                                           : json_string_value(json_object_get(v, "id"));
        const char *app = json_string_value(json_object_get(v, "application"));
        const char *ns = json_string_value(json_object_get(v, "namespace"));
        const json_t *e = app ? NULL : catalog_find(known, id ? id : "");

        if (e) {
            app = json_string_value(json_object_get(e, "application"));
            ns = json_string_value(json_object_get(e, "namespace"));
        }
        if (id && task_valid_name(id, 256) && add(list, id, app, ns) < 0)
            goto fail;
    }
    json_decref(known);
    return list;
fail:
    json_decref(known);
    json_decref(list);
    return NULL;
}

const json_t *catalog_find(const json_t *catalog, const char *id)
{
    size_t i;
    json_t *p;

    json_array_foreach(catalog, i, p)
        if (!strcmp(json_string_value(json_object_get(p, "id")), id))
            return p;
    return NULL;
}

json_t *catalog_namespaces(const json_t *catalog)
{
    /* AIOpsLab's init_problem installs OpenEBS and Prometheus (metadata prometheus.json:
     * namespace "observe") for every Kubernetes problem; start_problem removes them at
     * a normal end only. */
    static const char *const infra[] = {"openebs", "observe"};
    json_t *set = json_object(), *out = json_array(), *p;
    const char *ns;
    size_t i;

    if (!set || !out)
        goto fail;
    for (i = 0; i < sizeof(infra) / sizeof(infra[0]); i++)
        if (json_object_set_new(set, infra[i], json_true()) < 0 ||
            json_array_append_new(out, json_string(infra[i])) < 0)
            goto fail;
    json_array_foreach(catalog, i, p) {
        ns = json_string_value(json_object_get(p, "namespace"));
        if (ns && !json_object_get(set, ns) && (json_object_set_new(set, ns, json_true()) < 0 ||
                                                 json_array_append_new(out, json_string(ns)) < 0))
            goto fail;
    }
    json_decref(set);
    return out;
fail:
    json_decref(set);
    json_decref(out);
    return NULL;
}

bool catalog_contains(const json_t *catalog, const char *id)
{
    return catalog_find(catalog, id) != NULL;
}

static size_t distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), *row = calloc(lb + 1, sizeof(size_t)), d;

    if (!row)
        return (size_t)-1;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t prev = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t cur = row[j], best = prev + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            prev = cur;
        }
    }
    d = row[lb];
    free(row);
    return d;
}

void catalog_suggest(const json_t *catalog, const char *id, char *out, size_t size)
{
    const char *best[3] = {NULL, NULL, NULL};
    size_t bd[3] = {(size_t)-1, (size_t)-1, (size_t)-1}, i, n;
    json_t *p;

    json_array_foreach(catalog, i, p) {
        const char *c = json_string_value(json_object_get(p, "id"));
        size_t d = distance(id, c);
        for (int k = 0; k < 3; k++) {
            if (d < bd[k]) {
                for (int m = 2; m > k; m--) {
                    bd[m] = bd[m - 1];
                    best[m] = best[m - 1];
                }
                bd[k] = d;
                best[k] = c;
                break;
            }
        }
    }
    n = (size_t)snprintf(out, size, "is not a known problem id");
    for (int k = 0; k < 3 && best[k] && n < size; k++)
        n += (size_t)snprintf(out + n, size - n, "%s%s", k ? ", " : "; closest: ", best[k]);
}
