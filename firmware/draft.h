/* draft.h - prompt-lookup drafting for speculative decoding (docs/protocol.md).
 *
 * The draft is what followed the most recent earlier occurrence of the context's last n tokens
 * (n = DRAFT_MAX_NGRAM down to DRAFT_MIN_NGRAM, the longest that occurs), up to max_k tokens. No model, no
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
/* A single matching token is too weak a sign: measured on the shipped fortune model's free text,
 * 1-token matches were right 8% of the time, 2-token ones 30%, 3-token ones 72%. */
#define DRAFT_MIN_NGRAM 2

/* Writes at most max_k draft tokens for what follows ctx[0 .. n-1] into out[0 .. max_k-1].
 * Returns how many (0 when no suffix of DRAFT_MIN_NGRAM..DRAFT_MAX_NGRAM tokens occurs earlier). */
size_t draft_lookup(const uint32_t *ctx, size_t n, size_t max_k, uint32_t *out);

#ifdef __cplusplus
}
#endif

#endif /* EDGELM_DRAFT_H */
