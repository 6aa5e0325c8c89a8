/* names: lists of names in one setting ("a, b,c"), as LLM_KEY_ENVS, OUTBOUND_ALLOW_HOSTS
 * and WEBHOOK_ALLOWED_HOSTS give them. */
#ifndef TASKEXEC_NAMES_H
#define TASKEXEC_NAMES_H

#include <stdbool.h>
#include <stddef.h>

/* names_has: whether the n characters at name are one of the names of list (separated
 * by commas and spaces; NULL: none), compared exactly or, with nocase, ignoring ASCII
 * case. */
bool names_has(const char *list, const char *name, size_t n, bool nocase);

#endif
