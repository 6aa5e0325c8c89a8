/* crypto: see crypto.h. */
#include "core/crypto.h"
#include "core/err.h"

#include <nettle/base64.h>
#include <nettle/hmac.h>
#include <nettle/memops.h>
#include <nettle/sha1.h>
#include <nettle/sha2.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

static void to_hex(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

int crypto_random_hex(char *out, size_t nbytes)
{
    uint8_t raw[64];

    if (nbytes > sizeof(raw) || getrandom(raw, nbytes, 0) != (ssize_t)nbytes)
        return ERR_IO;
    to_hex(raw, nbytes, out);
    return 0;
}

void crypto_sha256_hex(const char *text, char out[CRYPTO_HEX_SHA256])
{
    struct sha256_ctx ctx;
    uint8_t md[SHA256_DIGEST_SIZE];

    sha256_init(&ctx);
    sha256_update(&ctx, strlen(text), (const uint8_t *)text);
    sha256_digest(&ctx, sizeof(md), md);
    to_hex(md, sizeof(md), out);
}

void crypto_hmac_sha256_hex(const char *key, const void *data, size_t len,
                            char out[CRYPTO_HEX_SHA256])
{
    struct hmac_sha256_ctx ctx;
    uint8_t md[SHA256_DIGEST_SIZE];

    hmac_sha256_set_key(&ctx, strlen(key), (const uint8_t *)key);
    hmac_sha256_update(&ctx, len, data);
    hmac_sha256_digest(&ctx, sizeof(md), md);
    to_hex(md, sizeof(md), out);
}

bool crypto_equal(const char *a, const char *b)
{
    size_t n = strlen(a);

    return n == strlen(b) && memeql_sec(a, b, n);
}

void crypto_ws_accept(const char *key, char out[CRYPTO_WS_ACCEPT])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    struct sha1_ctx ctx;
    uint8_t digest[SHA1_DIGEST_SIZE];
    char joined[128];

    snprintf(joined, sizeof(joined), "%.80s%s", key, guid);
    sha1_init(&ctx);
    sha1_update(&ctx, strlen(joined), (const uint8_t *)joined);
    sha1_digest(&ctx, sizeof(digest), digest);
    base64_encode_raw(out, sizeof(digest), digest); /* 28 characters, padded */
    out[BASE64_ENCODE_RAW_LENGTH(SHA1_DIGEST_SIZE)] = '\0';
}
