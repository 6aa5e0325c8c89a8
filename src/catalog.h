/* catalog: the problem ids the executor knows (AIOpsLab's registry), with each
 * problem's task type and application, for GET /api/v1/problems and strict validation. */
#ifndef TASKEXEC_CATALOG_H
#define TASKEXEC_CATALOG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* catalog_load: reads ids one a line from path ('#' comments), or the list built
 * into the binary when path is NULL or empty. Returns a new array of
 * {"id","task_type","application"} (caller json_decref's), NULL on error (logged). */
json_t *catalog_load(const char *path);
/* catalog_from_ids: the catalog of a JSON array of id strings (new reference). */
json_t *catalog_from_ids(json_t *ids);
bool catalog_contains(const json_t *catalog, const char *id);
/* catalog_suggest: "is not a known problem id; closest: a, b, c" into out. */
void catalog_suggest(const json_t *catalog, const char *id, char *out, size_t size);

#endif
