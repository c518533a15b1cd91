/* draft.h - prompt-lookup drafting for speculative decoding (docs/protocol.md).
 *
 * The draft is what followed the most recent earlier occurrence of the context's last n tokens
 * (n = DRAFT_MAX_NGRAM down to 1, the longest that occurs), up to max_k tokens. No model, no
 * allocation, no I/O: ctx in, draft out. Pure C11.
 */
#ifndef EDGELM_DRAFT_H
#define EDGELM_DRAFT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DRAFT_MAX_NGRAM 3

/* Writes at most max_k draft tokens for what follows ctx[0 .. n-1] into out[0 .. max_k-1].
 * Returns how many (0 when no suffix of 1..DRAFT_MAX_NGRAM tokens occurs earlier in ctx). */
size_t draft_lookup(const uint32_t *ctx, size_t n, size_t max_k, uint32_t *out);

#ifdef __cplusplus
}
#endif

#endif /* EDGELM_DRAFT_H */
