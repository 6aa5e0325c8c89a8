/* names: see names.h. */
#include "core/names.h"

#include <string.h>
#include <strings.h>

bool names_has(const char *list, const char *name, size_t n, bool nocase)
{
    for (const char *p = list; p && *p; p += strspn(p, ", ")) {
        size_t k = strcspn(p, ", ");

        if (k && k == n && !(nocase ? strncasecmp(p, name, n) : strncmp(p, name, n)))
            return true;
        p += k;
    }
    return false;
}
