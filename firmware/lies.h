/* lies.h - TEST ONLY: a runner that lies, for the tests of the host's checks.
 *
 * Compiled in only with EDGELM_TEST_LIES defined (cmake -DEDGELM_TEST_LIES=ON); a production
 * runner has none of this. The lie is chosen at start-up by the environment variable
 * EDGELM_TEST_LIE (unset or empty: honest; an unknown value: the runner exits with status 2):
 *
 *   swap:X        the best and second-best logits of a row, if at most X*std apart, swap values
 *   inflate:X     temperature > 0: argmax instead of sampling (one draw still used), and the
 *                 picked token's reported logit X*std higher
 *   noise:X       Gaussian noise of sigma X*std on every logit of a row (fixed seed, at start-up)
 *   topp          the top_p cut keeps one id more than the spec (sampler.h step 6)
 *   temperature   step 4 multiplies by the temperature instead of dividing by it
 *   stale         REQ_FLAG_KEEP_STATE keeps the longest common prefix of the held context and
 *                 the prompt (below n_prompt), not only a held state the prompt starts with
 *   stats_nan     STATS ttft_ms and decode_tok_s are NaN
 *   stats_fast    every TOKEN t_us / 10, and the STATS rates computed from those times
 *   stats_counts  STATS decode_calls one more than the truth
 *
 * std: the population standard deviation of the row over the whole vocabulary, in double.
 * swap and noise change a copy of the row; the pick and the reported logits both come from it.
 */
#ifndef EDGELM_LIES_H
#define EDGELM_LIES_H

#include <stdint.h>

#include "protocol.h"
#include "sampler.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    LIE_NONE = 0,
    LIE_SWAP,
    LIE_INFLATE,
    LIE_NOISE,
    LIE_TOPP,
    LIE_TEMPERATURE,
    LIE_STALE,
    LIE_STATS_NAN,
    LIE_STATS_FAST,
    LIE_STATS_COUNTS
};

typedef struct {
    int kind;       /* LIE_* */
    double x;       /* X of swap:X, inflate:X, noise:X (units of the row's std) */
    uint64_t rng;   /* noise: xorshift64* state, seeded once */
    int inflated;   /* the last lie_sample() picked greedily for inflate: lie_report raises its logit */
} Lie;

extern Lie g_lie;

/* Parses EDGELM_TEST_LIE's value (NULL or "": honest). Returns 0, or -1 with a message in err. */
int lie_init(const char *value, char *err, size_t err_cap);
/* The population standard deviation of row[0 .. n-1], in double. */
double lie_std(const float *row, uint32_t n);
/* sample() from *row under the lie: swap and noise point *row at a changed copy (valid until the
 * next call), inflate picks the argmax with one draw spent; otherwise sample() as it is. */
uint32_t lie_sample(Sampler *s, const float **row, float temperature, uint32_t top_k, float top_p);
/* After proto_fill_logits from row: inflate raises the picked token's logit and its top entry. */
void lie_report(TokenMsg *t, const float *row, uint32_t n);

#ifdef __cplusplus
}
#endif

#endif /* EDGELM_LIES_H */
