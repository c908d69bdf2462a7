/* lib/crypto: the constant-time comparison of API keys. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "../../lib/crypto.h"

/* Every length up to 40 and every offset of both buffers (a word-wise
 * comparison reads them unaligned): equal bytes compare equal, and one
 * bit flipped anywhere, in the first word, the last word or the tail,
 * compares unequal. */
static void ct_equal_sees_every_byte(void **state)
{
    unsigned char a[64];
    unsigned char b[64];
    size_t n;
    size_t off;
    size_t i;
    int bit;

    (void)state;
    for (i = 0; i < sizeof a; i++) {
        a[i] = (unsigned char)(i * 37 + 11);
    }
    for (n = 0; n <= 40; n++) {
        for (off = 0; off < 8; off++) {
            memcpy(b + off, a + 8 - off, n);
            assert_int_equal(ct_equal(a + 8 - off, b + off, n), 1);
            for (i = 0; i < n; i++) {
                for (bit = 0; bit < 8; bit++) {
                    b[off + i] ^= (unsigned char)(1u << bit);
                    assert_int_equal(ct_equal(a + 8 - off, b + off, n), 0);
                    b[off + i] ^= (unsigned char)(1u << bit);
                }
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ct_equal_sees_every_byte),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
