/* sampler.h - next-token selection for edgelm (docs/protocol.md, REQUEST).
 *
 * temperature == 0: greedy argmax, the lowest id wins a tie; the generator is not used.
 * temperature > 0, exactly:
 *   1. order all ids by logit, descending; equal logits keep the lower id first;
 *   2. keep the first top_k (0 or >= vocab: all);
 *   3. p_i = softmax(logit_i / temperature) over the kept ids (max subtracted first);
 *   4. keep the shortest prefix whose cumulative p reaches top_p (at least one id;
 *      top_p >= 1: all kept ids);
 *   5. r = u * (sum of p over the prefix), u = next_float(); return the first id of
 *      the prefix whose cumulative p exceeds r (the last one if rounding leaves none).
 * Generator: xorshift64*, state = seed (0 -> SAMPLER_DEFAULT_SEED);
 *   x ^= x >> 12; x ^= x << 25; x ^= x >> 27; out = x * 0x2545F4914F6CDD1D;
 *   next_float() = (float)((out >> 32) >> 8) / 16777216.0f      (in [0, 1))
 * One next_float() per sampled token.
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
    float value;  /* logit, then probability */
    uint32_t id;  /* token id */
} ProbIndex;

typedef struct {
    uint32_t vocab_size;  /* V */
    ProbIndex *candidates; /* [V] scratch for sorting */
    uint64_t rng_state;    /* xorshift64* state, never 0 */
} Sampler;

/* Allocates the scratch buffer for vocab_size ids. Returns 0, or -1 (out of memory or
 * vocab_size == 0). */
int build_sampler(Sampler *s, uint32_t vocab_size);
void free_sampler(Sampler *s);

/* Starts the generator for a request. */
void sampler_seed(Sampler *s, uint64_t seed);
uint32_t sampler_next_u32(Sampler *s);
float sampler_next_float(Sampler *s);

/* Argmax over logits[0 .. V-1]; the lowest id wins a tie. */
uint32_t sample_argmax(const float *logits, uint32_t vocab_size);

/* Picks the next token from logits[0 .. V-1] as described above. */
uint32_t sample(Sampler *s, const float *logits, float temperature, uint32_t top_k, float top_p);

#ifdef __cplusplus
}
#endif

#endif /* EDGELM_SAMPLER_H */
