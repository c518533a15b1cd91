/* draft.c - prompt-lookup drafting (draft.h). */
#include "draft.h"

#include <string.h>

size_t draft_lookup(const uint32_t *ctx, size_t n, size_t max_k, uint32_t *out) {
    if (ctx == NULL || out == NULL || max_k == 0) return 0;
    for (size_t g = DRAFT_MAX_NGRAM; g >= DRAFT_MIN_NGRAM; g--) {
        if (n < g + 1) continue; /* the suffix and at least one token before it */
        const uint32_t *suffix = ctx + (n - g);
        /* Most recent first: start j is where an earlier copy of the suffix begins; what
         * follows it, ctx[j + g ...], lies before n. */
        for (size_t j = n - g; j-- > 0;) {
            if (memcmp(ctx + j, suffix, g * sizeof *ctx) != 0) continue;
            size_t k = n - (j + g);
            if (k > max_k) k = max_k;
            memcpy(out, ctx + j + g, k * sizeof *ctx);
            return k;
        }
    }
    return 0;
}
