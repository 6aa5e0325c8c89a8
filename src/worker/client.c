/* client: see client.h. */
#include "worker/client.h"
#include "core/buf.h"
#include "core/err.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REPLY_MAX (256u * 1024 * 1024)

int client_init(struct client *c, const char *base_url)
{
    size_t n = strlen(base_url);

    memset(c, 0, sizeof(*c));
    c->timeout_ms = 30000;
    while (n > 0 && base_url[n - 1] == '/')
        n--;
    c->base = strndup(base_url, n);
    if (!c->base)
        return ERR_NOMEM;
    /* curl_global_init is done once by main(), before any thread. */
    c->curl = curl_easy_init();
    if (!c->curl) {
        free(c->base);
        c->base = NULL;
        return ERR_IO;
    }
    return 0;
}

void client_reset(struct client *c)
{
    if (c->curl)
        curl_easy_cleanup(c->curl);
    free(c->base);
    free(c->token);
    memset(c, 0, sizeof(*c));
}

int client_set_token(struct client *c, const char *token)
{
    char *t = token ? strdup(token) : NULL;

    if (token && !t)
        return ERR_NOMEM;
    free(c->token);
    c->token = t;
    return 0;
}

static size_t on_data(char *p, size_t size, size_t n, void *ud)
{
    struct buf *b = ud;

    return buf_append(b, p, size * n) == 0 ? size * n : 0;
}

int client_call(struct client *c, const char *method, const char *path, const json_t *body,
                long *status, json_t **reply)
{
    CURL *h = c->curl;
    struct curl_slist *hdr = NULL;
    struct buf in;
    char *url = NULL, *text = NULL, auth[600];
    CURLcode cc;
    int rc = ERR_NOMEM;

    *reply = NULL;
    buf_init(&in, REPLY_MAX);
    if (asprintf(&url, "%s%s", c->base, path) < 0) {
        url = NULL;
        goto out;
    }
    if (body && !(text = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY)))
        goto out;
    curl_easy_reset(h);
    hdr = curl_slist_append(hdr, "Content-Type: application/json");
    hdr = curl_slist_append(hdr, "Accept: application/json");
    if (c->token) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", c->token);
        hdr = curl_slist_append(hdr, auth);
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &in);
    if (text) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, text);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(text));
    } else if (!strcmp(method, "POST") || !strcmp(method, "PUT")) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, 0L);
    }
    cc = curl_easy_perform(h);
    if (cc != CURLE_OK) {
        snprintf(c->error, sizeof(c->error), "%s %s: %s", method, url, curl_easy_strerror(cc));
        rc = ERR_IO;
        goto out;
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    if (in.len)
        *reply = json_loadb(in.data, in.len, 0, NULL);
    rc = 0;
out:
    curl_slist_free_all(hdr);
    buf_reset(&in);
    free(text);
    free(url);
    return rc;
}
