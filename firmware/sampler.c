/* sampler.c - greedy and temperature/top-k/top-p sampling (see sampler.h). */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

/* ----------------------------------------------------------------------------
 * Lifetime */

int build_sampler(Sampler *s, uint32_t vocab_size) {
    s->vocab_size = 0;
    s->candidates = NULL;
    s->rng_state = SAMPLER_DEFAULT_SEED;
    if (vocab_size == 0) return -1;
    s->candidates = (ProbIndex *)calloc(vocab_size, sizeof(ProbIndex));
    if (!s->candidates) return -1;
    s->vocab_size = vocab_size;
    return 0;
}

void free_sampler(Sampler *s) {
    free(s->candidates);
    s->candidates = NULL;
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

float sampler_next_float(Sampler *s) { return (float)(sampler_next_u32(s) >> 8) / 16777216.0f; }

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

/* Descending value, then ascending id: a total order, so the result is deterministic. */
static int compare_desc(const void *a, const void *b) {
    const ProbIndex *x = (const ProbIndex *)a, *y = (const ProbIndex *)b;
    if (x->value > y->value) return -1;
    if (x->value < y->value) return 1;
    return (x->id > y->id) - (x->id < y->id);
}

uint32_t sample(Sampler *s, const float *logits, float temperature, uint32_t top_k, float top_p) {
    uint32_t V = s->vocab_size;
    if (!(temperature > 0.0f)) return sample_argmax(logits, V);

    /* 1-2: order by logit, keep top_k */
    ProbIndex *c = s->candidates;
    for (uint32_t i = 0; i < V; i++) {
        c[i].value = isnan(logits[i]) ? -INFINITY : logits[i]; /* keeps the order total */
        c[i].id = i;
    }
    qsort(c, V, sizeof *c, compare_desc);
    uint32_t n = (top_k == 0 || top_k > V) ? V : top_k;

    /* 3: softmax of logit / temperature over the kept ids */
    float max = c[0].value;
    if (!isfinite(max)) return c[0].id; /* +inf wins outright; all -inf: nothing to weigh */
    double sum = 0.0;
    for (uint32_t i = 0; i < n; i++) {
        c[i].value = expf((c[i].value - max) / temperature);
        sum += c[i].value;
    }
    for (uint32_t i = 0; i < n; i++) c[i].value = (float)(c[i].value / sum);

    /* 4: top_p prefix */
    float mass = 0.0f;
    uint32_t keep = n;
    if (top_p < 1.0f) {
        for (uint32_t i = 0; i < n; i++) {
            mass += c[i].value;
            if (mass >= top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    if (keep == n) {
        mass = 0.0f;
        for (uint32_t i = 0; i < n; i++) mass += c[i].value;
    }

    /* 5: draw */
    float r = sampler_next_float(s) * mass;
    float cdf = 0.0f;
    for (uint32_t i = 0; i < keep; i++) {
        cdf += c[i].value;
        if (r < cdf) return c[i].id;
    }
    return c[keep - 1].id;
}
