/* sampler.h - next-token selection for edgelm (docs/protocol.md, REQUEST).
 *
 * The algorithm is specified to the bit so that the host can replay it
 * (toolchain/validate/sampler.py is its twin, cross-checked in tests/fuzz/):
 *
 * temperature == 0 (any temperature not > 0): greedy argmax, the lowest id wins a tie, a NaN
 *   loses to every number; the generator is not used.
 * temperature > 0, exactly, all arithmetic in IEEE-754 double, round to nearest:
 *   1. order all ids by logit, descending, a NaN counting as -inf; equal logits keep the
 *      lower id first (a total order);
 *   2. keep the first n = top_k ids (top_k 0 or > V: n = V);
 *   3. u = next_float(): exactly one draw per sampled token, whatever follows;
 *      if the first logit is not finite (+inf, or every logit -inf/NaN) return its id;
 *   4. e_i = exp(((double)logit_i - (double)logit_0) / (double)temperature), libm exp(),
 *      for i = 0 .. n-1 in order; Z = e_0 + e_1 + ... + e_{n-1}, summed left to right;
 *   5. p_i = e_i / Z; cdf_i = p_0 + ... + p_i, summed left to right;
 *   6. keep = the first i + 1 with cdf_i >= (double)top_p when (double)top_p < 1 (top_p 0
 *      keeps one id), else, or when no cdf_i reaches it, keep = n; mass = cdf_{keep-1};
 *   7. r = u * mass; return the id of the first i < keep with r < cdf_i (the last kept id if
 *      none: rounding).
 * No step multiplies and adds in one expression, so FMA contraction cannot change a result.
 * Generator: xorshift64*, state = seed (0 -> SAMPLER_DEFAULT_SEED);
 *   x ^= x >> 12; x ^= x << 25; x ^= x >> 27; out = x * 0x2545F4914F6CDD1D (mod 2^64);
 *   next_u32() = out >> 32; next_float() = (double)(out >> 40) / 2^24   (exact, in [0, 1))
 *
 * Test-only fault: built with EDGELM_TEST_SAMPLER_BUG defined (cmake
 * -DEDGELM_TEST_SAMPLER_BUG=ON), temperature > 0 ignores the logits and returns
 * min(floor(u * V), V - 1) with the same single draw u: a board whose sampler is wrong.
 * Built with EDGELM_TEST_LIES, the lies `topp` (step 6 keeps one id more) and `temperature`
 * (step 4 multiplies by it) are chosen at run time (lies.h).
 */
#ifndef EDGELM_SAMPLER_H
#define EDGELM_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SAMPLER_DEFAULT_SEED 0x9E3779B97F4A7C15ull /* replaces seed 0 */

typedef struct {
    float logit;  /* NaN replaced by -inf */
    uint32_t id;  /* token id */
} ProbIndex;

/* How the last sample() with temperature > 0 picked its token (the host's twin returns the
 * same as a Draw): candidates[0 .. kept-1] and cdf[0 .. kept-1] hold the kept ids and their
 * cdf_i. When the first logit is not finite: kept 1, cdf[0] = 1, mass 1, r = u. */
typedef struct {
    uint32_t kept; /* ids kept after top_k and top_p; 0: greedy (or the test-only fault) */
    double u;      /* the draw */
    double mass;   /* cdf[kept-1] */
    double r;      /* u * mass */
} LastDraw;

typedef struct {
    uint32_t vocab_size;   /* V */
    ProbIndex *candidates; /* [V] scratch: ids in sampling order */
    double *cdf;           /* [V] scratch: e_i, then cdf_i (steps 4-5 above) */
    uint64_t rng_state;    /* xorshift64* state, never 0 */
    LastDraw last;         /* the last sampled token's draw */
} Sampler;

/* Allocates the scratch buffers for vocab_size ids. Returns 0, or -1 (out of memory or
 * vocab_size == 0). free_sampler is safe after a failed build_sampler. */
int build_sampler(Sampler *s, uint32_t vocab_size);
void free_sampler(Sampler *s);

/* Starts the generator for a request. */
void sampler_seed(Sampler *s, uint64_t seed);
uint32_t sampler_next_u32(Sampler *s);
double sampler_next_float(Sampler *s);

/* Argmax over logits[0 .. V-1]; the lowest id wins a tie. */
uint32_t sample_argmax(const float *logits, uint32_t vocab_size);

/* Picks the next token from logits[0 .. V-1] (V = s->vocab_size) as described above. */
uint32_t sample(Sampler *s, const float *logits, float temperature, uint32_t top_k, float top_p);

#ifdef __cplusplus
}
#endif

#endif /* EDGELM_SAMPLER_H */
