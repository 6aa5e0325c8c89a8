/* catalog: the problem ids the executor knows (AIOpsLab's registry), with each
 * problem's task type and application, for GET /api/v1/problems and strict validation. */
#ifndef TASKEXEC_CATALOG_H
#define TASKEXEC_CATALOG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* catalog_load: reads "id [application [namespace]]" lines from path ('#' comments;
 * a bare id takes the rest from the built-in table), or the table built into the
 * binary (share/aiopslab-problems.txt) when path is NULL or empty. Returns a new array
 * of {"id","task_type","application","namespace"} (caller json_decref's; unknown
 * fields are absent), NULL on error (logged). */
json_t *catalog_load(const char *path);
/* catalog_from_list: the catalog of what the aiopslab runner lists: id strings or
 * {"id","application","namespace"} objects (new reference; invalid ids are skipped). */
json_t *catalog_from_list(const json_t *items);
/* catalog_find: the entry of id (borrowed), NULL when unknown. */
const json_t *catalog_find(const json_t *catalog, const char *id);
bool catalog_contains(const json_t *catalog, const char *id);
/* catalog_namespaces: the distinct namespaces the catalog's problems deploy into, and
 * those AIOpsLab installs for every problem (openebs, observe): what a run may leave on
 * a cluster. A new array of strings; NULL without memory. */
json_t *catalog_namespaces(const json_t *catalog);
/* catalog_suggest: "is not a known problem id; closest: a, b, c" into out. */
void catalog_suggest(const json_t *catalog, const char *id, char *out, size_t size);

#endif
