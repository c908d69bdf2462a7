/* SHA-256 (FIPS 180-4), random bytes and constant-time comparison: the
 * little cryptography ctxd needs, without a crypto library dependency. */
#ifndef CTXD_CRYPTO_H
#define CTXD_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#define SHA256_LEN 32

struct sha256
{
    uint32_t h[8];     /* chaining state */
    uint64_t total;    /* bytes hashed so far */
    uint8_t block[64]; /* pending partial block */
    size_t fill;       /* bytes used in block */
};

void sha256_init(struct sha256 *s);
void sha256_update(struct sha256 *s, const void *p, size_t n);
void sha256_final(struct sha256 *s, uint8_t out[SHA256_LEN]);
void sha256(const void *p, size_t n, uint8_t out[SHA256_LEN]);

/* Lower-case hex of n bytes into out, which holds 2n+1 bytes. */
void hex_encode(const uint8_t *p, size_t n, char *out);

/* The value of one hex digit (either case), or -1. */
int hex_digit(char c);

/* Fill p with n bytes from the kernel's CSPRNG. Returns 0 or -1. */
int random_bytes(void *p, size_t n);

/* 1 when the n bytes at a and b are equal; time depends on n only. */
int ct_equal(const void *a, const void *b, size_t n);

#endif
