/* sha256.h - SHA-256 (FIPS 180-4), streaming, for HELLO's model_sha256. */
#ifndef EDGELM_SHA256_H
#define EDGELM_SHA256_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SHA256_DIGEST_LEN 32
#define SHA256_HEX_LEN 64 /* without the terminating NUL */

typedef struct {
    uint32_t state[8];
    uint64_t total_len; /* bytes hashed so far */
    uint8_t block[64];  /* partial block */
    size_t block_len;   /* bytes used in block */
} Sha256;

void sha256_init(Sha256 *h);
void sha256_update(Sha256 *h, const void *data, size_t len);
void sha256_final(Sha256 *h, uint8_t digest[SHA256_DIGEST_LEN]);

#ifndef EDGELM_BARE_METAL
/* Hashes a whole file. Returns 0, or -1 with errno set by open/read. (Not on bare metal.) */
int sha256_file(const char *path, uint8_t digest[SHA256_DIGEST_LEN]);
#endif

/* Lower-case hex of a digest into hex[SHA256_HEX_LEN + 1]. */
void sha256_hex(const uint8_t digest[SHA256_DIGEST_LEN], char hex[SHA256_HEX_LEN + 1]);

#ifdef __cplusplus
}
#endif

#endif /* EDGELM_SHA256_H */
