/* store/rules: the business rules both backends apply (see rules.h). */
#include "store/rules.h"
#include "core/err.h"

#include <stdlib.h>
#include <string.h>

/* Characters with a meaning in an extended regular expression outside a class. */
static const char regex_special[] = ".^$+(){}|\\*?[]";

/* The closing ] of the class opening at p, or NULL when there is none (the [ is then
 * literal). A ] first in the class (after any ! or ^) is one of its characters. */
static const char *class_end(const char *p)
{
    p++;
    if (*p == '!' || *p == '^')
        p++;
    if (*p == ']')
        p++;
    return strchr(p, ']');
}

/* One glob into w, which has room for twice its length. Returns the end. */
static char *glob_one(const char *p, char *w)
{
    while (*p) {
        const char *end = *p == '[' ? class_end(p) : NULL;

        if (*p == '*') {
            *w++ = '.';
            *w++ = '*';
            p++;
        } else if (*p == '?') {
            *w++ = '.';
            p++;
        } else if (end) {
            *w++ = *p++;
            if (*p == '!' || *p == '^') {
                *w++ = '^';
                p++;
            }
            while (p <= end)
                *w++ = *p++;
        } else {
            if (strchr(regex_special, *p))
                *w++ = '\\';
            *w++ = *p++;
        }
    }
    return w;
}

int rules_globs_regex(const char *const *globs, size_t n, char **out)
{
    size_t cap = 8;
    char *re, *w;

    *out = NULL;
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        cap += strlen(globs[i]) * 2 + 3;
    re = malloc(cap);
    if (!re)
        return ERR_NOMEM;
    w = re;
    *w++ = '^';
    *w++ = '(';
    for (size_t i = 0; i < n; i++) {
        if (i)
            *w++ = '|';
        *w++ = '(';
        w = glob_one(globs[i], w);
        *w++ = ')';
    }
    *w++ = ')';
    *w++ = '$';
    *w = '\0';
    *out = re;
    return 0;
}
