/* lies.c - TEST ONLY: the lies of a runner built with EDGELM_TEST_LIES (see lies.h). */
#include "lies.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

Lie g_lie = {LIE_NONE, 0.0, 0, 0};

static float *g_copy = NULL; /* the changed row of swap and noise */
static uint32_t g_copy_n = 0;

int lie_init(const char *value, char *err, size_t err_cap) {
    static const struct {
        const char *name;
        int kind;
        int takes_x;
    } lies[] = {{"swap", LIE_SWAP, 1},           {"inflate", LIE_INFLATE, 1},
                {"noise", LIE_NOISE, 1},         {"topp", LIE_TOPP, 0},
                {"temperature", LIE_TEMPERATURE, 0}, {"stale", LIE_STALE, 0},
                {"stats_nan", LIE_STATS_NAN, 0}, {"stats_fast", LIE_STATS_FAST, 0},
                {"stats_counts", LIE_STATS_COUNTS, 0}};
    g_lie = (Lie){LIE_NONE, 0.0, 0x2545F4914F6CDD1Dull, 0};
    if (!value || !*value) return 0;
    const char *colon = strchr(value, ':');
    size_t len = colon ? (size_t)(colon - value) : strlen(value);
    for (size_t i = 0; i < sizeof lies / sizeof lies[0]; i++) {
        if (strlen(lies[i].name) != len || strncmp(value, lies[i].name, len) != 0) continue;
        if (lies[i].takes_x) {
            char *end = NULL;
            double x = colon ? strtod(colon + 1, &end) : NAN;
            if (!colon || end == colon + 1 || *end != '\0' || !isfinite(x) || x < 0) {
                snprintf(err, err_cap, "EDGELM_TEST_LIE=%s: %s takes a number >= 0, as %s:0.5", value,
                         lies[i].name, lies[i].name);
                return -1;
            }
            g_lie.x = x;
        } else if (colon) {
            snprintf(err, err_cap, "EDGELM_TEST_LIE=%s: %s takes no value", value, lies[i].name);
            return -1;
        }
        g_lie.kind = lies[i].kind;
        return 0;
    }
    snprintf(err, err_cap, "EDGELM_TEST_LIE=%s is not one of swap:X, inflate:X, noise:X, topp, temperature, "
             "stale, stats_nan, stats_fast, stats_counts", value);
    return -1;
}

double lie_std(const float *row, uint32_t n) {
    double mean = 0.0, var = 0.0;
    for (uint32_t i = 0; i < n; i++) mean += (double)row[i];
    mean /= (double)n;
    for (uint32_t i = 0; i < n; i++) var += ((double)row[i] - mean) * ((double)row[i] - mean);
    return sqrt(var / (double)n);
}

/* A standard normal deviate: xorshift64* and Box-Muller. */
static double lie_gauss(void) {
    double u[2];
    for (int k = 0; k < 2; k++) {
        uint64_t x = g_lie.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        g_lie.rng = x;
        u[k] = ((double)((x * 0x2545F4914F6CDD1Dull) >> 11) + 0.5) / 9007199254740992.0; /* (0, 1) */
    }
    return sqrt(-2.0 * log(u[0])) * cos(6.283185307179586 * u[1]);
}

/* swap and noise: the changed copy of row, or row itself. */
static const float *lie_row(const float *row, uint32_t n) {
    if (g_lie.kind != LIE_SWAP && g_lie.kind != LIE_NOISE) return row;
    if (g_copy_n < n) {
        free(g_copy);
        g_copy = (float *)malloc((size_t)n * sizeof *g_copy);
        if (!g_copy) abort();
        g_copy_n = n;
    }
    memcpy(g_copy, row, (size_t)n * sizeof *g_copy);
    double sd = lie_std(row, n);
    if (g_lie.kind == LIE_NOISE) {
        for (uint32_t i = 0; i < n; i++) g_copy[i] = (float)((double)g_copy[i] + g_lie.x * sd * lie_gauss());
        return g_copy;
    }
    uint32_t best = sample_argmax(row, n), second = best == 0 ? 1 : 0;
    if (n < 2) return g_copy;
    for (uint32_t i = 0; i < n; i++)
        if (i != best && row[i] > row[second]) second = i;
    if ((double)row[best] - (double)row[second] <= g_lie.x * sd) {
        g_copy[best] = row[second];
        g_copy[second] = row[best];
    }
    return g_copy;
}

uint32_t lie_sample(Sampler *s, const float **row, float temperature, uint32_t top_k, float top_p) {
    *row = lie_row(*row, s->vocab_size);
    g_lie.inflated = g_lie.kind == LIE_INFLATE && temperature > 0.0f;
    if (g_lie.inflated) {
        s->last = (LastDraw){0, sampler_next_float(s), 0.0, 0.0}; /* the draw it would have used */
        return sample_argmax(*row, s->vocab_size);
    }
    return sample(s, *row, temperature, top_k, top_p);
}

void lie_report(TokenMsg *t, const float *row, uint32_t n) {
    if (!g_lie.inflated || t->n_top == 0) return;
    float up = (float)(g_lie.x * lie_std(row, n));
    t->logit += up;
    for (uint8_t i = 0; i < t->n_top; i++)
        if (t->top_id[i] == t->token) t->top_logit[i] += up;
}
