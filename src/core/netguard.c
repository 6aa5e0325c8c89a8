/* netguard: see netguard.h. */
#include "core/netguard.h"
#include "core/names.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static bool v4_refused(const uint8_t a[4])
{
    return (a[0] == 169 && a[1] == 254) ||
           (a[0] == 100 && a[1] == 100 && a[2] == 100 && a[3] == 200);
}

bool netguard_refused_addr(const struct sockaddr *sa, char *text, size_t size)
{
    static const uint8_t aws[16] = {0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54};
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    bool refused = false;

    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;

        refused = v4_refused((const uint8_t *)&in->sin_addr);
        inet_ntop(AF_INET, &in->sin_addr, text, (socklen_t)size);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        const uint8_t *b = in6->sin6_addr.s6_addr;

        refused = (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) || !memcmp(b, aws, 16) ||
                  (!memcmp(b, mapped, 12) && v4_refused(b + 12));
        inet_ntop(AF_INET6, &in6->sin6_addr, text, (socklen_t)size);
    }
    return refused;
}

static curl_socket_t open_socket(void *ctx, curlsocktype purpose, struct curl_sockaddr *a)
{
    struct netguard *g = ctx;
    char text[64] = "";

    if (purpose == CURLSOCKTYPE_IPCXN)
        g->tried++;
    if (purpose == CURLSOCKTYPE_IPCXN && netguard_refused_addr(&a->addr, text, sizeof(text))) {
        g->n_refused++;
        snprintf(g->refused, sizeof(g->refused),
                 "refused to connect to %s: a link-local or cloud metadata address (name the "
                 "host in OUTBOUND_ALLOW_HOSTS to allow it)", text);
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype, a->protocol);
}

/* Whether url's host (as libcurl parses it) is one of the comma-separated names. */
static bool host_listed(const char *url, const char *list)
{
    CURLU *u = curl_url();
    char *host = NULL;
    bool found = false;

    if (!u || !list || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
        curl_url_cleanup(u);
        return false;
    }
    {
        const char *h = host;
        size_t hn = strlen(h);

        if (hn > 2 && h[0] == '[' && h[hn - 1] == ']') { /* an IPv6 literal */
            h++;
            hn -= 2;
        }
        found = names_has(list, h, hn, true);
    }
    curl_free(host);
    curl_url_cleanup(u);
    return found;
}

void netguard_apply(struct netguard *g, CURL *h, const char *url, const char *allow_hosts)
{
    g->refused[0] = '\0';
    g->tried = g->n_refused = 0;
    g->allowed = host_listed(url, allow_hosts);
    if (g->allowed)
        return;
    /* Through a proxy (http_proxy and friends in the environment) the check would see
     * the proxy's address, not the target's: outbound calls go direct. */
    curl_easy_setopt(h, CURLOPT_PROXY, "");
    curl_easy_setopt(h, CURLOPT_OPENSOCKETFUNCTION, open_socket);
    curl_easy_setopt(h, CURLOPT_OPENSOCKETDATA, g);
}

bool netguard_all_refused(const struct netguard *g)
{
    return g->n_refused > 0 && g->n_refused == g->tried;
}
