/* catalog: known problem ids (see catalog.h). */
#include "catalog.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Generated at build time from data/aiopslab-problems.txt. */
extern const char catalog_builtin[];

static const char *task_type(const char *id)
{
    static const char *const types[] = {"detection", "localization", "analysis", "mitigation"};

    for (size_t i = 0; i < 4; i++)
        if (strstr(id, types[i]))
            return types[i];
    return NULL;
}

/* AIOpsLab names most problems after the application they break. */
static const char *application(const char *id)
{
    static const struct { const char *needle, *app; } apps[] = {
        {"astronomy_shop", "OpenTelemetry Astronomy Shop"},
        {"social_net", "SocialNetwork"},
        {"hotel_res", "HotelReservation"},
        {"flower", "Flower"},
        {"tidb", "TiDB"},
        {"mongodb", "HotelReservation"},
        {"k8s_target_port", "SocialNetwork"},
        {"redeploy_without_pv", "HotelReservation"},
        {"wrong_bin_usage", "HotelReservation"},
    };

    for (size_t i = 0; i < sizeof(apps) / sizeof(apps[0]); i++)
        if (strstr(id, apps[i].needle))
            return apps[i].app;
    return NULL;
}

static int add(json_t *list, const char *line)
{
    const char *tt = task_type(line), *app = application(line);

    return json_array_append_new(list, json_pack("{s:s, s:s?, s:s?}", "id", line, "task_type",
                                                 tt, "application", app));
}

static int add_lines(json_t *list, char *text)
{
    for (char *line = text, *next; line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        line[strcspn(line, "\r #")] = '\0';
        if (*line && add(list, line) < 0)
            return -1;
    }
    return 0;
}

json_t *catalog_load(const char *path)
{
    json_t *list = json_array();
    char *text = NULL;
    size_t len = 0;
    FILE *f;

    if (!list)
        return NULL;
    if (!path || !*path) {
        text = strdup(catalog_builtin);
    } else {
        f = fopen(path, "r");
        if (!f) {
            log_error("PROBLEMS_FILE %s cannot be read", path);
            json_decref(list);
            return NULL;
        }
        if (getdelim(&text, &len, '\0', f) < 0) {
            free(text);
            text = strdup("");
        }
        fclose(f);
    }
    if (!text || add_lines(list, text) < 0) {
        free(text);
        json_decref(list);
        return NULL;
    }
    free(text);
    return list;
}

json_t *catalog_from_ids(json_t *ids)
{
    json_t *list = json_array(), *v;
    size_t i;

    json_array_foreach(ids, i, v) {
        if (json_is_string(v) && add(list, json_string_value(v)) < 0) {
            json_decref(list);
            return NULL;
        }
    }
    return list;
}

bool catalog_contains(const json_t *catalog, const char *id)
{
    size_t i;
    json_t *p;

    json_array_foreach(catalog, i, p)
        if (!strcmp(json_string_value(json_object_get(p, "id")), id))
            return true;
    return false;
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
