/* crypto: random secrets, SHA-256 digests and constant-time comparison (Nettle: GnuTLS's crypto
 * library, which libmicrohttpd loads anyway; OpenSSL's libcrypto cost 1.4 MB of resident
 * memory at start). */
#ifndef TASKEXEC_CRYPTO_H
#define TASKEXEC_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>

#define CRYPTO_HEX_SHA256 65   /* 64 hex digits and a NUL */

/* crypto_random_hex: nbytes of randomness from the kernel as 2*nbytes hex digits in
 * out (at least 2*nbytes+1 bytes). ERR_IO when the kernel gives none. */
int crypto_random_hex(char *out, size_t nbytes) __attribute__((warn_unused_result));
/* crypto_sha256_hex: the SHA-256 of the NUL-terminated text, in lower-case hex. */
void crypto_sha256_hex(const char *text, char out[CRYPTO_HEX_SHA256]);
/* crypto_hmac_sha256_hex: HMAC-SHA256 of data under key, in lower-case hex. */
void crypto_hmac_sha256_hex(const char *key, const void *data, size_t len,
                            char out[CRYPTO_HEX_SHA256]);
/* crypto_ws_accept: the Sec-WebSocket-Accept of a Sec-WebSocket-Key (RFC 6455 4.2.2:
 * base64 of the SHA-1 of the key and the protocol's GUID), 28 characters and a NUL. */
#define CRYPTO_WS_ACCEPT 29
void crypto_ws_accept(const char *key, char out[CRYPTO_WS_ACCEPT]);
/* crypto_equal: a == b, in time that does not depend on where they differ. */
bool crypto_equal(const char *a, const char *b);

#endif
