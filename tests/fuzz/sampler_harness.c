/* sampler_harness.c - drives firmware/sampler.c from stdin, for the Python twin to replay.
 *
 * How the Python tests use it: tests/fuzz/build_sampler_harness.sh OUT compiles this file with
 * firmware/sampler.c under gcc -fsanitize=address,undefined (errors abort) to OUT; the tests
 * write cases to its stdin and compare stdout with toolchain/validate/sampler.py.
 *
 * Input: cases, whitespace-separated, all numbers hexadecimal (no 0x), until end of input:
 *   V TEMPERATURE TOP_K TOP_P SEED N LOGIT_0 .. LOGIT_{V-1}
 * TEMPERATURE, TOP_P and the logits are the bits of IEEE-754 f32 values (8 hex digits), SEED a
 * u64, V, TOP_K and N u32; 1 <= V <= MAX_VOCAB, N <= MAX_DRAWS.
 * Output, one line per case: the generator is seeded with SEED and sample() runs N times on
 * the same logits (the draws continue one stream); then NEXT, the next next_float(), shows how
 * many draws the samples took; then U_1 .. U_N, the first N next_float() after SEED again;
 * then the kept ids and cdf of the last sampled draw (Sampler.last), when it kept at most
 * MAX_LISTED ids:
 *   "S_1 .. S_N | NEXT | U_1 .. U_N | LAST"
 * S_i is "TOK" for a greedy pick, else "TOK/KEPT/U/MASS/R" (Sampler.last after that sample);
 * LAST is "ID:CDF_0 ID:CDF_1 .." or "-" (no sampled draw, or more than MAX_LISTED kept).
 * Tokens, ids and KEPT are decimal; U, MASS, R, CDF and the uniforms are the bits of the
 * double (16 hex digits).
 * Exit status 0 = every case ran, 2 = malformed input or out of memory (message on stderr); a
 * sanitizer finding aborts with a non-zero status.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sampler.h"

#define MAX_VOCAB (1u << 20) /* the largest V a case may give */
#define MAX_DRAWS 4096u      /* the most samples per case */
#define MAX_LISTED 64u       /* the most kept ids printed for the last draw */

/* ----------------------------------------------------------------------------
 * Input */

static int read_u32(uint32_t *out) { return scanf("%8" SCNx32, out) == 1 ? 0 : -1; }

static int read_f32(float *out) {
    uint32_t bits;
    if (read_u32(&bits) != 0) return -1;
    memcpy(out, &bits, sizeof *out);
    return 0;
}

static uint64_t double_bits(double d) {
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    return bits;
}

/* ----------------------------------------------------------------------------
 * One case */

typedef struct {
    uint32_t vocab_size; /* V */
    float temperature;
    uint32_t top_k;
    float top_p;
    uint64_t seed;
    uint32_t draws; /* N */
} Case;

/* Reads the header of the next case. Returns 1 (a case), 0 (clean end of input) or -1. */
static int read_case(Case *c) {
    uint32_t v;
    int got = scanf("%8" SCNx32, &v);
    if (got == EOF) return 0;
    if (got != 1) return -1;
    c->vocab_size = v;
    if (read_f32(&c->temperature) || read_u32(&c->top_k) || read_f32(&c->top_p)) return -1;
    if (scanf("%16" SCNx64, &c->seed) != 1 || read_u32(&c->draws) != 0) return -1;
    if (c->vocab_size == 0 || c->vocab_size > MAX_VOCAB || c->draws > MAX_DRAWS) return -1;
    return 1;
}

static int run_case(const Case *c, float *logits) {
    for (uint32_t i = 0; i < c->vocab_size; i++) {
        if (read_f32(&logits[i]) != 0) return -1;
    }
    Sampler s;
    if (build_sampler(&s, c->vocab_size) != 0) {
        free_sampler(&s);
        return -1;
    }
    sampler_seed(&s, c->seed);
    LastDraw last = {0, 0.0, 0.0, 0.0};
    for (uint32_t i = 0; i < c->draws; i++) {
        uint32_t tok = sample(&s, logits, c->temperature, c->top_k, c->top_p);
        printf("%" PRIu32, tok);
        if (s.last.kept) {
            last = s.last;
            printf("/%" PRIu32 "/%016" PRIx64 "/%016" PRIx64 "/%016" PRIx64, last.kept,
                   double_bits(last.u), double_bits(last.mass), double_bits(last.r));
        }
        printf(" ");
    }
    printf("| %016" PRIx64 " |", double_bits(sampler_next_float(&s)));
    sampler_seed(&s, c->seed);
    for (uint32_t i = 0; i < c->draws; i++) printf(" %016" PRIx64, double_bits(sampler_next_float(&s)));
    printf(" |");
    if (last.kept == 0 || last.kept > MAX_LISTED) printf(" -");
    for (uint32_t i = 0; last.kept <= MAX_LISTED && i < last.kept; i++) {
        printf(" %" PRIu32 ":%016" PRIx64, s.candidates[i].id, double_bits(s.cdf[i]));
    }
    printf("\n");
    free_sampler(&s);
    return 0;
}

/* ----------------------------------------------------------------------------
 * main */

int main(int argc, char **argv) {
    (void)argv;
    if (argc != 1) {
        fprintf(stderr, "usage: sampler_harness < cases   (format: the comment at the top of sampler_harness.c)\n");
        return 2;
    }
    float *logits = (float *)malloc(MAX_VOCAB * sizeof(float));
    if (!logits) {
        fprintf(stderr, "out of memory\n");
        return 2;
    }
    int status = 0;
    for (unsigned long n = 0;; n++) {
        Case c;
        int got = read_case(&c);
        if (got == 0) break;
        if (got < 0 || run_case(&c, logits) != 0) {
            fprintf(stderr, "case %lu: malformed input (or out of memory)\n", n);
            status = 2;
            break;
        }
    }
    free(logits);
    fflush(stdout);
    return status;
}
