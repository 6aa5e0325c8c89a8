/* Unit tests: API tokens and roles (model/access.c) and the outbound address guard
 * (core/netguard.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/netguard.h"
#include "model/access.h"

static const char r_tok[] = "rrrrrrrrrrrrrrrrrrrr", w_tok[] = "wwwwwwwwwwwwwwwwwwww";

static char *write_file(const char *text)
{
    static char path[64];
    FILE *f;

    snprintf(path, sizeof(path), "/tmp/taskexec-tokens-%d", (int)getpid());
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void roles_include_the_ones_below(void **state)
{
    char text[200], why[300] = "";
    struct access *a = NULL;

    (void)state;
    snprintf(text, sizeof(text), "# team\n\n%s read\n%s\twrite\n", r_tok, w_tok);
    assert_int_equal(access_load("aaaaaaaaaaaaaaaaaaaa", write_file(text), &a, why, sizeof(why)), 0);
    assert_true(access_enabled(a));
    assert_int_equal(access_role_of(a, r_tok), ROLE_READ);
    assert_int_equal(access_role_of(a, w_tok), ROLE_WRITE);
    assert_int_equal(access_role_of(a, "aaaaaaaaaaaaaaaaaaaa"), ROLE_ADMIN);
    assert_int_equal(access_role_of(a, "aaaaaaaaaaaaaaaaaaab"), ROLE_NONE);
    assert_int_equal(access_role_of(a, NULL), ROLE_NONE);
    assert_true(ROLE_ADMIN > ROLE_WRITE && ROLE_WRITE > ROLE_READ);
    access_free(a);
    /* Nothing configured: off. */
    assert_int_equal(access_load(NULL, NULL, &a, why, sizeof(why)), 0);
    assert_false(access_enabled(a));
    access_free(a);
}

static void bad_lines_are_named(void **state)
{
    const char *const cases[][2] = {
        {"rrrrrrrrrrrrrrrrrrrr reader\n", "line 1: unknown role"},
        {"# c\nrrrrrrrrrrrrrrrrrrrr\n", "line 2: expected"},
        {"short read\n", "line 1: a token must be"},
        {"rrrrrrrrrrrrrrrrrrrr read\nrrrrrrrrrrrrrrrrrrrr admin\n", "line 2: this token is given twice"},
        {"", "has no token"},
    };
    char why[300];
    struct access *a = NULL;

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        why[0] = '\0';
        assert_int_equal(access_load(NULL, write_file(cases[i][0]), &a, why, sizeof(why)),
                         ERR_INVALID);
        assert_non_null(strstr(why, cases[i][1]));
    }
    assert_int_equal(access_load("", NULL, &a, why, sizeof(why)), ERR_INVALID);
    assert_non_null(strstr(why, "API_TOKEN"));
    assert_int_equal(access_load(NULL, "/nonexistent/tokens", &a, why, sizeof(why)), ERR_IO);
    unlink(write_file(""));
}

static void bearer_headers_are_parsed_strictly(void **state)
{
    (void)state;
    assert_string_equal(access_bearer("Bearer abc"), "abc");
    assert_string_equal(access_bearer("bearer   abc"), "abc");
    assert_null(access_bearer(NULL));
    assert_null(access_bearer("Bearer"));
    assert_null(access_bearer("Bearer "));
    assert_null(access_bearer("Basic abc"));
    assert_null(access_bearer("Bearer a b"));
    assert_null(access_bearer("Bearer caf\xc3\xa9"));
    char long_header[ACCESS_TOKEN_MAX + 16];
    memcpy(long_header, "Bearer ", 7);
    memset(long_header + 7, 'x', ACCESS_TOKEN_MAX + 1);
    long_header[7 + ACCESS_TOKEN_MAX + 1] = '\0';
    assert_null(access_bearer(long_header));
    long_header[7 + ACCESS_TOKEN_MAX] = '\0';
    assert_non_null(access_bearer(long_header));
}

static bool refused(int family, const char *text)
{
    struct sockaddr_in in = {.sin_family = AF_INET};
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
    char shown[64];

    if (family == AF_INET) {
        assert_int_equal(inet_pton(AF_INET, text, &in.sin_addr), 1);
        return netguard_refused_addr((struct sockaddr *)&in, shown, sizeof(shown));
    }
    assert_int_equal(inet_pton(AF_INET6, text, &in6.sin6_addr), 1);
    return netguard_refused_addr((struct sockaddr *)&in6, shown, sizeof(shown));
}

static void metadata_addresses_are_refused(void **state)
{
    (void)state;
    assert_true(refused(AF_INET, "169.254.169.254"));
    assert_true(refused(AF_INET, "169.254.0.1"));
    assert_true(refused(AF_INET, "100.100.100.200"));
    assert_true(refused(AF_INET6, "fe80::1"));
    assert_true(refused(AF_INET6, "febf::1"));
    assert_true(refused(AF_INET6, "fd00:ec2::254"));
    assert_true(refused(AF_INET6, "::ffff:169.254.169.254"));
    assert_false(refused(AF_INET, "127.0.0.1"));
    assert_false(refused(AF_INET, "10.0.0.1"));
    assert_false(refused(AF_INET, "169.255.0.1"));
    assert_false(refused(AF_INET, "100.100.100.201"));
    assert_false(refused(AF_INET6, "::1"));
    assert_false(refused(AF_INET6, "fec0::1"));
    assert_false(refused(AF_INET6, "::ffff:10.0.0.1"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(roles_include_the_ones_below),
        cmocka_unit_test(bad_lines_are_named),
        cmocka_unit_test(bearer_headers_are_parsed_strictly),
        cmocka_unit_test(metadata_addresses_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
