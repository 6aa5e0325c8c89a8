/* netguard: outbound HTTP (webhooks, the LLM gateway's upstreams) never reaches a
 * link-local or cloud-metadata address unless the URL's host is allowed by name
 * (CONTRACT.md "Deployment and access control").
 *
 * DESIGN
 * The check is on the address a socket is about to connect to (libcurl's
 * CURLOPT_OPENSOCKETFUNCTION), after name resolution, so a name that resolves there is
 * refused as surely as the address written out; and it is made for every address
 * libcurl tries, so no fallback slips past. Refused: 169.254.0.0/16 and fe80::/10 (where
 * clouds serve instance metadata and credentials), the same inside an IPv4-mapped IPv6
 * address, and the known metadata addresses outside them (fd00:ec2::254 of AWS,
 * 100.100.100.200 of Alibaba Cloud). Proxies from the environment are not used: through
 * one, the address checked would be the proxy's. */
#ifndef TASKEXEC_NETGUARD_H
#define TASKEXEC_NETGUARD_H

#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

struct netguard {
    bool allowed;                /* the URL's host is named in the allow list: no check */
    char refused[200];           /* why a connection was refused ("" when none was) */
    int tried, n_refused;        /* addresses libcurl was about to connect to, and refused */
};

/* netguard_refused_addr: whether sa is an address outbound calls must not reach; when it
 * is, its text goes to text (at least 64 bytes). */
bool netguard_refused_addr(const struct sockaddr *sa, char *text, size_t size);
/* netguard_all_refused: whether every address tried was refused (a transfer that also
 * tried an allowed address failed for another reason, which a retry may not meet). */
bool netguard_all_refused(const struct netguard *g);
/* netguard_apply: guards h's next transfer to url (and turns off proxies from the
 * environment, through which the check could not see the target); allow_hosts: comma-separated host
 * names or addresses that may be reached anyway (NULL: none). g must outlive the
 * transfer; after it, g->refused says whether (and why) the guard stopped it. */
void netguard_apply(struct netguard *g, CURL *h, const char *url, const char *allow_hosts);

#endif
