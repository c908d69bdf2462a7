/* Unit tests for api/metrics.c: family and label validation, series
 * identity, counter/gauge/histogram recording, label and help escaping,
 * value formatting, the exact exposition text, and the process registry's
 * recording helpers. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../api/metrics.h"

static int setup(void **state)
{
    struct metrics *m;

    if (metrics_new(&m) != METRICS_OK) {
        return -1;
    }
    *state = m;
    return 0;
}

static int teardown(void **state)
{
    metrics_free(*state);
    return 0;
}

/* The whole exposition of m as a NUL-terminated string (caller frees). */
static char *expose(struct metrics *m)
{
    struct buf out = BUF_INIT;
    size_t len;

    assert_int_equal(metrics_write(m, &out), METRICS_OK);
    assert_int_equal(buf_append_char(&out, '\0'), 0);
    return buf_steal(&out, &len);
}

/******************************************************************************
 * metrics_family_add
 *****************************************************************************/

static void invalid_names_and_labels_are_refused(void **state)
{
    struct metrics *m = *state;
    static const char *const bad_label[] = {"__reserved"};
    static const char *const le[] = {"le"};
    static const char *const dash[] = {"a-b"};
    static const double bounds[] = {1, 2};
    static const double unordered[] = {2, 1};

    assert_int_equal(metrics_family_add(m, "9lives", "h", METRICS_COUNTER,
                                        NULL, 0, NULL, 0, NULL),
                     METRICS_EINVAL);
    assert_int_equal(metrics_family_add(m, "a b", "h", METRICS_COUNTER, NULL,
                                        0, NULL, 0, NULL),
                     METRICS_EINVAL);
    assert_int_equal(metrics_family_add(m, "x", "h", METRICS_COUNTER,
                                        bad_label, 1, NULL, 0, NULL),
                     METRICS_EINVAL);
    assert_int_equal(metrics_family_add(m, "x", "h", METRICS_COUNTER, dash, 1,
                                        NULL, 0, NULL),
                     METRICS_EINVAL);
    assert_int_equal(metrics_family_add(m, "x", "h", METRICS_HISTOGRAM, le, 1,
                                        bounds, 2, NULL),
                     METRICS_EINVAL);
    assert_int_equal(metrics_family_add(m, "x", "h", METRICS_HISTOGRAM, NULL,
                                        0, unordered, 2, NULL),
                     METRICS_EINVAL);
    assert_int_equal(metrics_family_add(m, "x", "h", METRICS_HISTOGRAM, NULL,
                                        0, NULL, 0, NULL),
                     METRICS_EINVAL);
    assert_int_equal(metrics_family_add(m, "x", "h", METRICS_COUNTER, NULL, 0,
                                        bounds, 2, NULL),
                     METRICS_EINVAL);
    assert_null(metrics_family_find(m, "x"));
}

static void a_name_registered_twice_is_refused(void **state)
{
    struct metrics *m = *state;

    assert_int_equal(metrics_family_add(m, "ns:x_total", "h", METRICS_COUNTER,
                                        NULL, 0, NULL, 0, NULL),
                     METRICS_OK);
    assert_int_equal(metrics_family_add(m, "ns:x_total", "h", METRICS_GAUGE,
                                        NULL, 0, NULL, 0, NULL),
                     METRICS_EINVAL);
    assert_non_null(metrics_family_find(m, "ns:x_total"));
}

/******************************************************************************
 * Series and recording
 *****************************************************************************/

static void the_same_label_values_give_the_same_series(void **state)
{
    struct metrics *m = *state;
    static const char *const labels[] = {"a", "b"};
    const char *v1[] = {"x", "y"};
    const char *v2[] = {"x", "y"};
    const char *v3[] = {"xy", ""};
    struct metrics_family *f;
    struct metrics_series *s;
    int i;

    assert_int_equal(metrics_family_add(m, "c_total", "h", METRICS_COUNTER,
                                        labels, 2, NULL, 0, &f),
                     METRICS_OK);
    s = metrics_series_get(f, v1);
    assert_non_null(s);
    assert_ptr_equal(metrics_series_get(f, v2), s);
    assert_ptr_not_equal(metrics_series_get(f, v3), s);
    for (i = 0; i < 200; i++) {
        char name[16];
        const char *v[2] = {name, "z"};

        snprintf(name, sizeof name, "n%d", i);
        assert_non_null(metrics_series_get(f, v));
    }
    assert_ptr_equal(metrics_series_get(f, v1), s);

    /* The same buffer with new contents is another series, also right
     * after a lookup (the last series found is checked first, by value). */
    {
        char name[16] = "x";
        const char *v[2] = {name, "y"};
        struct metrics_series *other;

        assert_ptr_equal(metrics_series_get(f, v), s);
        name[0] = 'w';
        other = metrics_series_get(f, v);
        assert_non_null(other);
        assert_ptr_not_equal(other, s);
        name[0] = 'x';
        assert_ptr_equal(metrics_series_get(f, v), s);
        assert_ptr_equal(metrics_series_get(f, v3), metrics_series_get(f, v3));
        assert_ptr_not_equal(metrics_series_get(f, v3), s);
    }
}

static void a_counter_never_goes_down(void **state)
{
    struct metrics *m = *state;
    struct metrics_family *f;
    struct metrics_series *s;

    assert_int_equal(metrics_family_add(m, "c_total", "h", METRICS_COUNTER,
                                        NULL, 0, NULL, 0, &f),
                     METRICS_OK);
    s = metrics_series_get(f, NULL);
    metrics_add(s, 2);
    metrics_add(s, -1);
    metrics_add(s, NAN);
    metrics_set(s, 0.5);
    assert_true(metrics_value(s) == 2);
}

static void a_gauge_goes_up_and_down(void **state)
{
    struct metrics *m = *state;
    struct metrics_family *f;
    struct metrics_series *s;

    assert_int_equal(metrics_family_add(m, "g", "h", METRICS_GAUGE, NULL, 0,
                                        NULL, 0, &f),
                     METRICS_OK);
    s = metrics_series_get(f, NULL);
    metrics_add(s, 3);
    metrics_add(s, -5);
    assert_true(metrics_value(s) == -2);
    metrics_set(s, 7);
    assert_true(metrics_value(s) == 7);
}

static void histogram_buckets_are_cumulative_with_inf_equal_to_count(
    void **state)
{
    struct metrics *m = *state;
    static const double bounds[] = {0.5, 1};
    struct metrics_family *f;
    struct metrics_series *s;
    char *text;

    assert_int_equal(metrics_family_add(m, "lat_seconds", "Latency.",
                                        METRICS_HISTOGRAM, NULL, 0, bounds, 2,
                                        &f),
                     METRICS_OK);
    s = metrics_series_get(f, NULL);
    metrics_observe(s, 0.25);
    metrics_observe(s, 0.5); /* le is inclusive */
    metrics_observe(s, 0.75);
    metrics_observe(s, 3);
    metrics_add(s, 100); /* not a histogram operation: ignored */
    assert_true(metrics_value(s) == 4);
    text = expose(m);
    assert_string_equal(text,
                        "# HELP lat_seconds Latency.\n"
                        "# TYPE lat_seconds histogram\n"
                        "lat_seconds_bucket{le=\"0.5\"} 2\n"
                        "lat_seconds_bucket{le=\"1\"} 3\n"
                        "lat_seconds_bucket{le=\"+Inf\"} 4\n"
                        "lat_seconds_sum 4.5\n"
                        "lat_seconds_count 4\n");
    free(text);
}

/******************************************************************************
 * metrics_write
 *****************************************************************************/

static void label_values_and_help_are_escaped(void **state)
{
    struct metrics *m = *state;
    static const char *const labels[] = {"path"};
    const char *v[] = {"a\\b\"c\nd"};
    struct metrics_family *f;
    char *text;

    assert_int_equal(metrics_family_add(m, "x_total", "back\\slash\nline",
                                        METRICS_COUNTER, labels, 1, NULL, 0,
                                        &f),
                     METRICS_OK);
    metrics_add(metrics_series_get(f, v), 1);
    text = expose(m);
    assert_string_equal(text,
                        "# HELP x_total back\\\\slash\\nline\n"
                        "# TYPE x_total counter\n"
                        "x_total{path=\"a\\\\b\\\"c\\nd\"} 1\n");
    free(text);
}

static void labelled_histograms_put_le_last(void **state)
{
    struct metrics *m = *state;
    static const char *const labels[] = {"route"};
    static const double bounds[] = {0.001};
    const char *v[] = {"/r"};
    struct metrics_family *f;
    char *text;

    assert_int_equal(metrics_family_add(m, "d_seconds", "h",
                                        METRICS_HISTOGRAM, labels, 1, bounds,
                                        1, &f),
                     METRICS_OK);
    metrics_observe(metrics_series_get(f, v), 0.0005);
    text = expose(m);
    assert_string_equal(text,
                        "# HELP d_seconds h\n"
                        "# TYPE d_seconds histogram\n"
                        "d_seconds_bucket{route=\"/r\",le=\"0.001\"} 1\n"
                        "d_seconds_bucket{route=\"/r\",le=\"+Inf\"} 1\n"
                        "d_seconds_sum{route=\"/r\"} 0.0005\n"
                        "d_seconds_count{route=\"/r\"} 1\n");
    free(text);
}

static void values_are_written_in_their_shortest_exact_form(void **state)
{
    static const struct
    {
        double v;
        const char *text;
    } cases[] = {
        {0, "0"},           {1, "1"},          {-2.5, "-2.5"},
        {0.1, "0.1"},       {1e21, "1e+21"},   {123456789012, "123456789012"},
        {INFINITY, "+Inf"}, {-INFINITY, "-Inf"}, {NAN, "NaN"},
        {0.1 + 0.2, "0.30000000000000004"},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct buf out = BUF_INIT;

        assert_int_equal(metrics_format_value(&out, cases[i].v), METRICS_OK);
        assert_string_equal(out.base, cases[i].text);
        buf_free(&out);
    }
}

static void families_are_written_in_registration_order(void **state)
{
    struct metrics *m = *state;
    struct metrics_family *f;
    char *text;

    assert_int_equal(metrics_family_add(m, "b", "B.", METRICS_GAUGE, NULL, 0,
                                        NULL, 0, &f),
                     METRICS_OK);
    metrics_set(metrics_series_get(f, NULL), 2);
    assert_int_equal(metrics_family_add(m, "a_total", "A.", METRICS_COUNTER,
                                        NULL, 0, NULL, 0, NULL),
                     METRICS_OK);
    text = expose(m);
    assert_string_equal(text,
                        "# HELP b B.\n# TYPE b gauge\nb 2\n"
                        "# HELP a_total A.\n# TYPE a_total counter\n");
    free(text);
}

/******************************************************************************
 * The process registry
 *****************************************************************************/

static void recording_helpers_count_by_route_method_and_class(void **state)
{
    const char *v2xx[] = {"/r/{id}", "PATCH", "2xx"};
    const char *v4xx[] = {"/r/{id}", "PATCH", "4xx"};
    const char *reason[] = {"body_too_large"};
    struct metrics *m;
    struct metrics_family *f;

    (void)state;
    metrics_process_free();
    metrics_api_request("/r/{id}", "PATCH", 204, 0.002);
    metrics_api_request("/r/{id}", "PATCH", 204, 0.003);
    metrics_api_request("/r/{id}", "PATCH", 404, 0.001);
    metrics_http_request_rejected("body_too_large");
    metrics_http_bytes_in(10);
    metrics_http_bytes_in(5);
    m = metrics_process();
    assert_non_null(m);
    f = metrics_family_find(m, "ctxd_http_requests_total");
    assert_true(metrics_value(metrics_series_get(f, v2xx)) == 2);
    assert_true(metrics_value(metrics_series_get(f, v4xx)) == 1);
    f = metrics_family_find(m, "ctxd_http_request_duration_seconds");
    assert_true(metrics_value(metrics_series_get(f, v2xx)) == 3);
    f = metrics_family_find(m, "ctxd_http_requests_rejected_total");
    assert_true(metrics_value(metrics_series_get(f, reason)) == 1);
    f = metrics_family_find(m, "ctxd_http_received_bytes_total");
    assert_true(metrics_value(metrics_series_get(f, NULL)) == 15);
    metrics_process_free();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(invalid_names_and_labels_are_refused,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(a_name_registered_twice_is_refused,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            the_same_label_values_give_the_same_series, setup, teardown),
        cmocka_unit_test_setup_teardown(a_counter_never_goes_down, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(a_gauge_goes_up_and_down, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            histogram_buckets_are_cumulative_with_inf_equal_to_count, setup,
            teardown),
        cmocka_unit_test_setup_teardown(label_values_and_help_are_escaped,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(labelled_histograms_put_le_last, setup,
                                        teardown),
        cmocka_unit_test(values_are_written_in_their_shortest_exact_form),
        cmocka_unit_test_setup_teardown(
            families_are_written_in_registration_order, setup, teardown),
        cmocka_unit_test(recording_helpers_count_by_route_method_and_class),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
