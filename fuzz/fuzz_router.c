/* libFuzzer target: request paths (alias mapping and route matching) and the other text
 * the server parses from a request: times, UUIDs, callback URLs. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/api.h"
#include "core/clock.h"
#include "http/router.h"
#include "service/webhook.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int hex(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                          : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Whether the path (before '?') percent-decodes to something with a NUL, as MHD decodes
 * it: then router_raw_path_has_nul must say so (else the cut path reroutes). */
static int decodes_to_nul(const char *raw)
{
    for (const char *p = raw; *p && *p != '?'; p++)
        if (p[0] == '%' && hex(p[1]) >= 0 && hex(p[2]) >= 0 && hex(p[1]) * 16 + hex(p[2]) == 0)
            return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const methods[] = {"GET", "POST", "PUT", "DELETE", "HEAD"};
    char path[1024], norm[1100], scratch[1100];
    const char *params[API_MAX_PARAMS];
    const struct route *r;
    size_t n_params, n;
    int64_t us;

    if (size == 0)
        return 0;
    n = size - 1 < sizeof(path) - 1 ? size - 1 : sizeof(path) - 1;
    memcpy(path, data + 1, n);
    path[n] = '\0';
    if (decodes_to_nul(path) && !router_raw_path_has_nul(path))
        abort();
    router_normalize(path, norm, sizeof(norm));
    if (router_match(methods[data[0] % 5], norm, scratch, &r, params, &n_params) ==
        ROUTER_FOUND) {
        for (size_t i = 0; i < n_params; i++)
            (void)strlen(params[i]);
    }
    (void)clock_parse(path, &us);
    (void)api_valid_uuid(path);
    (void)webhook_host_allowed(path, "127.0.0.1, hooks.example,[::1]");
    return 0;
}
