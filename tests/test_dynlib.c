/* Unit tests: core/dynlib, opening a library at its first use, against real libraries. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "core/dynlib.h"
#include "core/err.h"

static void a_present_library_resolves_each_function(void **state)
{
    static const char *const names[] = {"cos", "sqrt"};
    static void *fns[2];
    static struct dynlib m = DYNLIB_INIT("libm.so.6", "libc6", names, fns, 2);
    double (*c)(double);

    (void)state;
    assert_false(dynlib_loaded(&m));
    assert_int_equal(dynlib_load(&m), 0);
    assert_true(dynlib_loaded(&m));
    c = (double (*)(double))dynlib_fn(&m, 0);
    assert_true(c(0.0) == 1.0);
    assert_true(((double (*)(double))dynlib_fn(&m, 1))(9.0) == 3.0);
    assert_ptr_equal(dynlib_try(&m, 1), dynlib_fn(&m, 1));
    assert_int_equal(dynlib_load(&m), 0); /* once: the same answer again */
}

static void a_missing_library_names_its_package(void **state)
{
    static const char *const names[] = {"f"};
    static void *fns[1];
    static struct dynlib m = DYNLIB_INIT("libtaskexec-absent.so.9", "libabsent9", names, fns, 1);

    (void)state;
    assert_int_equal(dynlib_load(&m), ERR_NOTFOUND);
    assert_false(dynlib_loaded(&m));
    assert_non_null(strstr(m.err, "libtaskexec-absent.so.9"));
    assert_non_null(strstr(m.err, "Debian package libabsent9"));
    assert_int_equal(dynlib_load(&m), ERR_NOTFOUND); /* not tried again */
    assert_null(dynlib_try(&m, 0));
}

static void a_missing_function_is_an_error_not_a_null(void **state)
{
    static const char *const names[] = {"cos", "no_such_function_in_libm"};
    static void *fns[2];
    static struct dynlib m = DYNLIB_INIT("libm.so.6", "libc6", names, fns, 2);

    (void)state;
    assert_int_equal(dynlib_load(&m), ERR_NOTFOUND);
    assert_non_null(strstr(m.err, "no_such_function_in_libm"));
    assert_false(dynlib_loaded(&m));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_present_library_resolves_each_function),
        cmocka_unit_test(a_missing_library_names_its_package),
        cmocka_unit_test(a_missing_function_is_an_error_not_a_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
