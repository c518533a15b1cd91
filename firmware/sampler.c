/* sampler.c - greedy and temperature/top-k/top-p sampling (the exact algorithm: sampler.h). */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

#ifdef EDGELM_TEST_LIES
#include "lies.h" /* test only: the topp and temperature lies */
#endif

/* ----------------------------------------------------------------------------
 * Lifetime */

int build_sampler(Sampler *s, uint32_t vocab_size) {
    s->vocab_size = 0;
    s->candidates = NULL;
    s->cdf = NULL;
    s->rng_state = SAMPLER_DEFAULT_SEED;
    s->last = (LastDraw){0, 0.0, 0.0, 0.0};
    if (vocab_size == 0) return -1;
    s->candidates = (ProbIndex *)calloc(vocab_size, sizeof(ProbIndex));
    s->cdf = (double *)calloc(vocab_size, sizeof(double));
    if (!s->candidates || !s->cdf) {
        free_sampler(s);
        return -1;
    }
    s->vocab_size = vocab_size;
    return 0;
}

void free_sampler(Sampler *s) {
    free(s->candidates);
    free(s->cdf);
    s->candidates = NULL;
    s->cdf = NULL;
    s->vocab_size = 0;
}

/* ----------------------------------------------------------------------------
 * xorshift64* */

void sampler_seed(Sampler *s, uint64_t seed) { s->rng_state = seed ? seed : SAMPLER_DEFAULT_SEED; }

uint32_t sampler_next_u32(Sampler *s) {
    uint64_t x = s->rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    s->rng_state = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1Dull) >> 32);
}

/* 24 random bits over 2^24: exact in double (and in float), in [0, 1). */
double sampler_next_float(Sampler *s) { return (double)(sampler_next_u32(s) >> 8) / 16777216.0; }

/* ----------------------------------------------------------------------------
 * Selection */

uint32_t sample_argmax(const float *logits, uint32_t vocab_size) {
    uint32_t best = 0;
    for (uint32_t i = 1; i < vocab_size; i++) {
        /* strict: the first maximum stays; a NaN loses to any number */
        if (logits[i] > logits[best] || (isnan(logits[best]) && !isnan(logits[i]))) best = i;
    }
    return best;
}

/* Descending logit, then ascending id: a total order (no NaN here), so qsort's result is
 * unique whatever its algorithm. */
static int compare_desc(const void *a, const void *b) {
    const ProbIndex *x = (const ProbIndex *)a, *y = (const ProbIndex *)b;
    if (x->logit > y->logit) return -1;
    if (x->logit < y->logit) return 1;
    return (x->id > y->id) - (x->id < y->id);
}

uint32_t sample(Sampler *s, const float *logits, float temperature, uint32_t top_k, float top_p) {
    uint32_t V = s->vocab_size;
    s->last = (LastDraw){0, 0.0, 0.0, 0.0};
    if (!(temperature > 0.0f)) return sample_argmax(logits, V);
#ifdef EDGELM_TEST_SAMPLER_BUG
    /* test-only fault (sampler.h): uniform over the vocabulary, the same single draw */
    {
        double u = sampler_next_float(s);
        uint32_t tok = (uint32_t)(u * (double)V);
        s->last.u = u;
        return tok < V ? tok : V - 1;
    }
#endif

    /* 1-2: order by logit, keep the first n */
    ProbIndex *c = s->candidates;
    double *cdf = s->cdf;
    for (uint32_t i = 0; i < V; i++) {
        c[i].logit = isnan(logits[i]) ? -INFINITY : logits[i]; /* keeps the order total */
        c[i].id = i;
    }
    qsort(c, V, sizeof *c, compare_desc);
    uint32_t n = (top_k == 0 || top_k > V) ? V : top_k;

    /* 3: the one draw, before anything can return */
    double u = sampler_next_float(s);
    if (!isfinite(c[0].logit)) { /* +inf wins outright; all -inf: nothing to weigh */
        cdf[0] = 1.0;
        s->last = (LastDraw){1, u, 1.0, u};
        return c[0].id;
    }

    /* 4: e_i and their sum Z (e_0 = 1, so 1 <= Z <= n) */
    double max = (double)c[0].logit, temp = (double)temperature;
    double z = 0.0;
    for (uint32_t i = 0; i < n; i++) {
        cdf[i] = exp(((double)c[i].logit - max) / temp);
#ifdef EDGELM_TEST_LIES
        if (g_lie.kind == LIE_TEMPERATURE) cdf[i] = exp(((double)c[i].logit - max) * temp); /* lies.h */
#endif
        z += cdf[i];
    }

    /* 5-6: cumulative probabilities up to the top_p prefix */
    double p_cut = (double)top_p, cum = 0.0;
    uint32_t keep = n;
    for (uint32_t i = 0; i < n; i++) {
        cum += cdf[i] / z;
        cdf[i] = cum;
        if (p_cut < 1.0 && cum >= p_cut) {
            keep = i + 1;
#ifdef EDGELM_TEST_LIES
            if (g_lie.kind == LIE_TOPP && keep < n) { /* lies.h: one id more than the spec */
                cum += cdf[keep] / z;
                cdf[keep++] = cum;
            }
#endif
            break;
        }
    }
    double mass = cdf[keep - 1];

    /* 7: the first kept id whose cdf exceeds r */
    double r = u * mass;
    s->last = (LastDraw){keep, u, mass, r};
    for (uint32_t i = 0; i < keep; i++) {
        if (r < cdf[i]) return c[i].id;
    }
    return c[keep - 1].id;
}
