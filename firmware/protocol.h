/* protocol.h - edgelm serial protocol v1 messages (docs/protocol.md).
 *
 * Little-endian byte reader/writer with sticky bounds errors, the REQUEST parser and
 * the builders of the board's message bodies. Pure C11: no malloc, no I/O.
 */
#ifndef EDGELM_PROTOCOL_H
#define EDGELM_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#include "frame.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ----------------------------------------------------------------------------
 * Constants */

#define PROTO_VERSION 1

/* Message types: board -> host */
#define MSG_HELLO 0x01
#define MSG_TOKEN 0x02
#define MSG_STATS 0x03
#define MSG_ERROR 0x04
/* Message types: host -> board */
#define MSG_REQUEST 0x81
#define MSG_QUIT 0x82
#define MSG_CANCEL 0x83 /* stop the generation under way (empty body); the board ends it with STATS */

/* ERROR codes */
#define ERR_BAD_FRAME 1    /* COBS or length */
#define ERR_BAD_CRC 2
#define ERR_TOO_LONG 3     /* frame over the limit */
#define ERR_BAD_REQUEST 4  /* body does not parse, or unknown message type */
#define ERR_SEQ_TOO_LONG 5 /* prompt + max_new_tokens > max_seq_len */
#define ERR_RUNTIME 6      /* ExecuTorch failed */

/* STATS.stop */
#define STOP_TOKEN 0      /* EOS or a stop token */
#define STOP_MAX_TOKENS 1 /* max_new_tokens reached */
#define STOP_CANCELLED 2  /* the host sent CANCEL */

/* REQUEST.flags */
#define REQ_FLAG_IGNORE_STOP 0x1u /* bit 0: ignore the stop list (EOS ids included) */
#define REQ_FLAG_REPORT_LOGITS 0x2u /* bit 1: TOKEN frames carry the board's logits (see TokenMsg) */
#define REQ_FLAG_NO_DRAFT 0x4u /* bit 2: one token per forward call (no speculative drafts) */
#define REQ_FLAG_KEEP_STATE 0x8u /* bit 3: a prompt that starts with everything the model's state holds
                                    (the last request's prompt and reply: a chat turn) is fed from there */
#define TOKEN_MAX_TOP 4 /* candidates a TOKEN frame reports with REQ_FLAG_REPORT_LOGITS */

#define PROTO_SHA256_LEN 32
#define PROTO_MAX_ERROR_MESSAGE 512 /* bytes; longer messages are truncated */

/* Fixed part of a REQUEST body: max_new_tokens flags temperature top_k top_p seed n_prompt n_stop */
#define PROTO_REQUEST_FIXED_LEN (4 + 4 + 4 + 4 + 4 + 8 + 4 + 4)
/* Most token ids (prompt + stop) one REQUEST body can carry */
#define PROTO_MAX_REQUEST_IDS ((FRAME_MAX_BODY - PROTO_REQUEST_FIXED_LEN) / 4)

/* Maps a negative FrameReader result to an ERROR code (0 if it is not an error). */
uint16_t proto_error_for_frame(int frame_result);
/* "BAD_FRAME", "BAD_CRC", ... for an ERROR code; "UNKNOWN" otherwise. */
const char *proto_error_name(uint16_t code);

/* ----------------------------------------------------------------------------
 * Byte writer / reader. The first out-of-bounds access sets ok = 0; every later call
 * does nothing (writer) or returns 0 (reader), so callers check ok once at the end. */

typedef struct {
    uint8_t *buf;
    size_t cap; /* bytes available */
    size_t len; /* bytes written */
    int ok;
} ByteWriter;

void bw_init(ByteWriter *w, uint8_t *buf, size_t cap);
void bw_u8(ByteWriter *w, uint8_t v);
void bw_u16(ByteWriter *w, uint16_t v);
void bw_u32(ByteWriter *w, uint32_t v);
void bw_u64(ByteWriter *w, uint64_t v);
void bw_f32(ByteWriter *w, float v);
void bw_bytes(ByteWriter *w, const void *p, size_t n);
void bw_str(ByteWriter *w, const char *s); /* len:u16 + bytes; NULL writes "" */

typedef struct {
    const uint8_t *buf;
    size_t len; /* bytes available */
    size_t pos; /* bytes consumed */
    int ok;
} ByteReader;

void br_init(ByteReader *r, const uint8_t *buf, size_t len);
uint8_t br_u8(ByteReader *r);
uint16_t br_u16(ByteReader *r);
uint32_t br_u32(ByteReader *r);
uint64_t br_u64(ByteReader *r);
float br_f32(ByteReader *r);
/* Returns a pointer to the next n bytes and skips them, or NULL (ok = 0). */
const uint8_t *br_bytes(ByteReader *r, size_t n);
size_t br_remaining(const ByteReader *r);

/* ----------------------------------------------------------------------------
 * REQUEST (host -> board). The id arrays are not copied: prompt_le and stop_le point
 * into the parsed body (n u32 little-endian each) and live as long as the body. */

typedef struct {
    uint32_t max_new_tokens; /* >= 1 */
    uint32_t flags;          /* REQ_FLAG_*; unknown bits are ignored */
    float temperature;       /* 0 = greedy; finite, >= 0 */
    uint32_t top_k;          /* 0 = all */
    float top_p;             /* in [0, 1]; 1 = all */
    uint64_t seed;           /* 0 = the sampler's fixed constant */
    uint32_t n_prompt;       /* >= 1 */
    const uint8_t *prompt_le; /* [n_prompt] u32 */
    uint32_t n_stop;
    const uint8_t *stop_le;   /* [n_stop] u32 */
} Request;

/* Parses a REQUEST body. Returns 0, or -1 with a short reason in *why (static string).
 * Every length is checked against the body, and the body must be consumed exactly. */
int proto_parse_request(const uint8_t *body, size_t len, Request *req, const char **why);
uint32_t request_prompt_at(const Request *req, uint32_t i); /* i < n_prompt */
uint32_t request_stop_at(const Request *req, uint32_t i);   /* i < n_stop */
int request_is_stop(const Request *req, uint32_t token);    /* 1 if token is in stop */

/* ----------------------------------------------------------------------------
 * Board -> host bodies. Each proto_pack_* returns the body length, or -1 when cap is
 * too small. */

typedef struct {
    uint16_t proto;                        /* PROTO_VERSION */
    const char *firmware;                  /* UTF-8 */
    const char *board;                     /* UTF-8 */
    uint8_t model_sha256[PROTO_SHA256_LEN];
    uint32_t max_seq_len;                  /* tokens */
    uint32_t vocab_size;                   /* tokens */
    uint32_t threads;
    float load_ms;                         /* milliseconds */
} Hello;

typedef struct {
    uint32_t index; /* generated tokens of this request before this one */
    uint32_t token;
    uint64_t t_us;  /* microseconds since the request frame was received */
    /* With REQ_FLAG_REPORT_LOGITS (else n_top = 0 and nothing more is sent): */
    float logit;                      /* the board's logit of `token` */
    uint8_t n_top;                    /* <= TOKEN_MAX_TOP */
    uint32_t top_id[TOKEN_MAX_TOP];   /* the board's most likely tokens, best first */
    float top_logit[TOKEN_MAX_TOP];
} TokenMsg;

typedef struct {
    uint32_t prompt_tokens;
    uint32_t generated;
    uint8_t stop;          /* STOP_TOKEN, STOP_MAX_TOKENS or STOP_CANCELLED */
    float load_ms;         /* milliseconds */
    float ttft_ms;         /* milliseconds, request frame -> first token */
    float prefill_tok_s;   /* tokens per second */
    float decode_tok_s;    /* tokens per second */
    uint64_t peak_rss_kb;  /* kilobytes */
    uint32_t decode_calls; /* forward calls after the prefill */
    uint32_t draft_calls;  /* ... of which verified a draft */
    uint32_t drafted;      /* draft tokens proposed to the model for verification */
    uint32_t accepted;     /* draft tokens the model confirmed (each saved one call) */
    uint32_t draft_model_calls; /* forward calls of the program's draft method */
    uint32_t kept;         /* prompt tokens the state already held (REQ_FLAG_KEEP_STATE), not fed again */
} Stats;

long proto_pack_hello(uint8_t *out, size_t cap, const Hello *h);
long proto_pack_token(uint8_t *out, size_t cap, const TokenMsg *t);
/* Sets t->logit to logits[token] and t->top_* to the TOKEN_MAX_TOP largest of logits[0..vocab),
 * best first, the lower id first on a tie (what REQ_FLAG_REPORT_LOGITS reports). */
void proto_fill_logits(TokenMsg *t, const float *logits, uint32_t vocab, uint32_t token);
/* Sets st->ttft_ms, prefill_tok_s and decode_tok_s from a request's clock readings (microseconds):
 * received at t_request, first token at t_first, last at t_last; `prefilled` prompt tokens were fed. */
void proto_fill_rates(Stats *st, uint32_t prefilled, uint32_t generated, uint64_t t_request, uint64_t t_first,
                      uint64_t t_last);
long proto_pack_stats(uint8_t *out, size_t cap, const Stats *s);
/* message is truncated to PROTO_MAX_ERROR_MESSAGE bytes (at a UTF-8 boundary). */
long proto_pack_error(uint8_t *out, size_t cap, uint16_t code, const char *message);

#ifdef __cplusplus
}
#endif

#endif /* EDGELM_PROTOCOL_H */
