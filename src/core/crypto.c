/* crypto: see crypto.h. */
#include "core/crypto.h"
#include "core/err.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

static void to_hex(const unsigned char *in, size_t n, char *out)
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
    unsigned char raw[64];

    if (nbytes > sizeof(raw) || getrandom(raw, nbytes, 0) != (ssize_t)nbytes)
        return ERR_IO;
    to_hex(raw, nbytes, out);
    return 0;
}

void crypto_sha256_hex(const char *text, char out[CRYPTO_HEX_SHA256])
{
    unsigned char md[SHA256_DIGEST_LENGTH];

    SHA256((const unsigned char *)text, strlen(text), md);
    to_hex(md, sizeof(md), out);
}

void crypto_hmac_sha256_hex(const char *key, const void *data, size_t len,
                            char out[CRYPTO_HEX_SHA256])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;

    HMAC(EVP_sha256(), key, (int)strlen(key), data, len, md, &n);
    to_hex(md, n, out);
}

bool crypto_equal(const char *a, const char *b)
{
    size_t n = strlen(a);

    return n == strlen(b) && CRYPTO_memcmp(a, b, n) == 0;
}

void crypto_ws_accept(const char *key, char out[CRYPTO_WS_ACCEPT])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char digest[SHA_DIGEST_LENGTH];
    char joined[128];

    snprintf(joined, sizeof(joined), "%.80s%s", key, guid);
    SHA1((const unsigned char *)joined, strlen(joined), digest);
    EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH); /* 28 chars + NUL */
}
