/* draft_harness.c - firmware/draft.c on cases from stdin, one per line:
 *     max_k n t_0 ... t_{n-1}
 * answered on stdout as
 *     k d_0 ... d_{k-1}
 * Built under AddressSanitizer and UBSan by tests/fuzz/test_draft.py: the context is copied to a
 * buffer of exactly n tokens, and out to one of exactly max_k, so a read or write past either ends
 * the run. */
#include <stdio.h>
#include <stdlib.h>

#include "draft.h"

int main(void) {
    unsigned long max_k, n;
    while (scanf("%lu %lu", &max_k, &n) == 2) {
        uint32_t *ctx = malloc((n ? n : 1) * sizeof *ctx);
        uint32_t *out = malloc((max_k ? max_k : 1) * sizeof *out);
        if (!ctx || !out) return 2;
        for (unsigned long i = 0; i < n; i++) {
            unsigned long t;
            if (scanf("%lu", &t) != 1) return 3;
            ctx[i] = (uint32_t)t;
        }
        size_t k = draft_lookup(ctx, n, max_k, out);
        if (k > max_k) return 4;
        printf("%zu", k);
        for (size_t i = 0; i < k; i++) printf(" %u", out[i]);
        printf("\n");
        free(ctx);
        free(out);
    }
    return 0;
}
