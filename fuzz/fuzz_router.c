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
