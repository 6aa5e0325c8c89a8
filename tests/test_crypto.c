/* Unit tests: core/crypto against published vectors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "core/crypto.h"

static void ws_accept_matches_rfc_6455(void **state)
{
    char out[CRYPTO_WS_ACCEPT];

    (void)state;
    /* RFC 6455 section 1.3's example handshake */
    crypto_ws_accept("dGhlIHNhbXBsZSBub25jZQ==", out);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

static void sha256_of_abc(void **state)
{
    char out[CRYPTO_HEX_SHA256];

    (void)state;
    crypto_sha256_hex("abc", out);   /* FIPS 180-2, appendix B.1 */
    assert_string_equal(out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ws_accept_matches_rfc_6455),
        cmocka_unit_test(sha256_of_abc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
