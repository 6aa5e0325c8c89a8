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

static void hmac_sha256_of_rfc_4231_case_2(void **state)
{
    char out[CRYPTO_HEX_SHA256];
    static const char data[] = "what do ya want for nothing?";

    (void)state;
    crypto_hmac_sha256_hex("Jefe", data, strlen(data), out);
    assert_string_equal(out, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

static void equal_compares_whole_strings(void **state)
{
    (void)state;
    assert_true(crypto_equal("abc", "abc"));
    assert_false(crypto_equal("abc", "abd"));
    assert_false(crypto_equal("abc", "ab"));
    assert_true(crypto_equal("", ""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ws_accept_matches_rfc_6455),
        cmocka_unit_test(sha256_of_abc),
        cmocka_unit_test(hmac_sha256_of_rfc_4231_case_2),
        cmocka_unit_test(equal_compares_whole_strings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
