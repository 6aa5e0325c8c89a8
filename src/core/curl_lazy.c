/* curl_lazy: libcurl opened at its first use (the first webhook, model call, URL check
 * or CLI request), not at start; core/dynlib.h says why. Each function the project calls
 * is defined here with curl.h's own declaration and forwarded. */
#define CURL_DISABLE_TYPECHECK /* its macros would rename the two variadic stubs */
#include "core/dynlib.h"

#include <curl/curl.h>
#include <stdarg.h>

#define CURL_FUNCS(X)                                                                    \
    X(curl_easy_cleanup) X(curl_easy_escape) X(curl_easy_getinfo) X(curl_easy_init)      \
    X(curl_easy_perform) X(curl_easy_reset) X(curl_easy_setopt) X(curl_easy_strerror)    \
    X(curl_free) X(curl_global_cleanup) X(curl_global_init) X(curl_multi_add_handle)     \
    X(curl_multi_cleanup) X(curl_multi_info_read) X(curl_multi_init)                     \
    X(curl_multi_perform) X(curl_multi_poll) X(curl_multi_remove_handle)                 \
    X(curl_multi_wakeup) X(curl_slist_append) X(curl_slist_free_all) X(curl_url)         \
    X(curl_url_cleanup) X(curl_url_get) X(curl_url_set)

DYNLIB_DEFINE(libcurl, "libcurl.so.4", "libcurl4", CURL_FUNCS);

#define CALL(f) ((__typeof__(f) *)dynlib_fn(&libcurl, I_##f))

/* Without libcurl (logged once): an init fails and the functions that make handles give
 * NULL, which every caller handles already (as out of memory); the others take a handle,
 * so they are never reached. */
#define TRY(f) ((__typeof__(f) *)dynlib_try(&libcurl, I_##f))

CURLcode curl_global_init(long flags)
{
    __typeof__(curl_global_init) *f = TRY(curl_global_init);

    return f ? f(flags) : CURLE_FAILED_INIT;
}
void curl_global_cleanup(void)
{
    /* nothing to clean up when libcurl was never opened */
    if (dynlib_loaded(&libcurl))
        CALL(curl_global_cleanup)();
}

/* The variadic two take one argument after the option, whose type the option's number
 * says (curl.h's CURLOPTTYPE_* ranges, which libcurl's own setopt reads it by); it is
 * read as that type and passed on. */
CURLcode curl_easy_setopt(CURL *curl, CURLoption option, ...)
{
    va_list ap;
    CURLcode rc;

    va_start(ap, option);
    if (option < CURLOPTTYPE_OBJECTPOINT)
        rc = CALL(curl_easy_setopt)(curl, option, va_arg(ap, long));
    else if (option < CURLOPTTYPE_FUNCTIONPOINT || option >= CURLOPTTYPE_BLOB)
        rc = CALL(curl_easy_setopt)(curl, option, va_arg(ap, void *));
    else if (option < CURLOPTTYPE_OFF_T)
        rc = CALL(curl_easy_setopt)(curl, option, va_arg(ap, void (*)(void)));
    else
        rc = CALL(curl_easy_setopt)(curl, option, va_arg(ap, curl_off_t));
    va_end(ap);
    return rc;
}
/* Every CURLINFO_* takes a pointer to where the answer goes. */
CURLcode curl_easy_getinfo(CURL *curl, CURLINFO info, ...)
{
    va_list ap;
    void *out;

    va_start(ap, info);
    out = va_arg(ap, void *);
    va_end(ap);
    return CALL(curl_easy_getinfo)(curl, info, out);
}

void curl_easy_cleanup(CURL *curl) { CALL(curl_easy_cleanup)(curl); }
char *curl_easy_escape(CURL *handle, const char *string, int length)
{
    return CALL(curl_easy_escape)(handle, string, length);
}
CURL *curl_easy_init(void)
{
    __typeof__(curl_easy_init) *f = TRY(curl_easy_init);

    return f ? f() : NULL;
}
CURLcode curl_easy_perform(CURL *curl) { return CALL(curl_easy_perform)(curl); }
void curl_easy_reset(CURL *curl) { CALL(curl_easy_reset)(curl); }
const char *curl_easy_strerror(CURLcode code) { return CALL(curl_easy_strerror)(code); }
void curl_free(void *p) { CALL(curl_free)(p); }
CURLMcode curl_multi_add_handle(CURLM *multi, CURL *curl)
{
    return CALL(curl_multi_add_handle)(multi, curl);
}
CURLMcode curl_multi_cleanup(CURLM *multi) { return CALL(curl_multi_cleanup)(multi); }
CURLMsg *curl_multi_info_read(CURLM *multi, int *msgs_in_queue)
{
    return CALL(curl_multi_info_read)(multi, msgs_in_queue);
}
CURLM *curl_multi_init(void)
{
    __typeof__(curl_multi_init) *f = TRY(curl_multi_init);

    return f ? f() : NULL;
}
CURLMcode curl_multi_perform(CURLM *multi, int *running_handles)
{
    return CALL(curl_multi_perform)(multi, running_handles);
}
CURLMcode curl_multi_poll(CURLM *multi, struct curl_waitfd extra_fds[],
                          unsigned int extra_nfds, int timeout_ms, int *ret)
{
    return CALL(curl_multi_poll)(multi, extra_fds, extra_nfds, timeout_ms, ret);
}
CURLMcode curl_multi_remove_handle(CURLM *multi, CURL *curl)
{
    return CALL(curl_multi_remove_handle)(multi, curl);
}
CURLMcode curl_multi_wakeup(CURLM *multi) { return CALL(curl_multi_wakeup)(multi); }
struct curl_slist *curl_slist_append(struct curl_slist *list, const char *data)
{
    __typeof__(curl_slist_append) *f = TRY(curl_slist_append);

    return f ? f(list, data) : NULL;
}
void curl_slist_free_all(struct curl_slist *list) { CALL(curl_slist_free_all)(list); }
CURLU *curl_url(void)
{
    __typeof__(curl_url) *f = TRY(curl_url);

    return f ? f() : NULL;
}
void curl_url_cleanup(CURLU *handle) { CALL(curl_url_cleanup)(handle); }
CURLUcode curl_url_get(CURLU *handle, CURLUPart what, char **part, unsigned int flags)
{
    return CALL(curl_url_get)(handle, what, part, flags);
}
CURLUcode curl_url_set(CURLU *handle, CURLUPart what, const char *part, unsigned int flags)
{
    return CALL(curl_url_set)(handle, what, part, flags);
}
