/* protocol.c - edgelm serial protocol v1 messages (see protocol.h, docs/protocol.md). */
#include "protocol.h"

#include <math.h>
#include <string.h>

uint16_t proto_error_for_frame(int frame_result) {
    switch (frame_result) {
    case FRAME_ERR_BAD_FRAME: return ERR_BAD_FRAME;
    case FRAME_ERR_BAD_CRC: return ERR_BAD_CRC;
    case FRAME_ERR_TOO_LONG: return ERR_TOO_LONG;
    default: return (uint16_t)(frame_result < 0 ? ERR_BAD_FRAME : 0);
    }
}

const char *proto_error_name(uint16_t code) {
    switch (code) {
    case ERR_BAD_FRAME: return "BAD_FRAME";
    case ERR_BAD_CRC: return "BAD_CRC";
    case ERR_TOO_LONG: return "TOO_LONG";
    case ERR_BAD_REQUEST: return "BAD_REQUEST";
    case ERR_SEQ_TOO_LONG: return "SEQ_TOO_LONG";
    case ERR_RUNTIME: return "RUNTIME";
    default: return "UNKNOWN";
    }
}

/* ----------------------------------------------------------------------------
 * Byte writer */

void bw_init(ByteWriter *w, uint8_t *buf, size_t cap) {
    w->buf = buf;
    w->cap = buf ? cap : 0;
    w->len = 0;
    w->ok = 1;
}

/* Reserves n bytes and returns where to write them, or NULL (and ok = 0). */
static uint8_t *bw_reserve(ByteWriter *w, size_t n) {
    if (!w->ok || n > w->cap - w->len) {
        w->ok = 0;
        return NULL;
    }
    uint8_t *p = w->buf + w->len;
    w->len += n;
    return p;
}

static void bw_uint(ByteWriter *w, uint64_t v, size_t n) {
    uint8_t *p = bw_reserve(w, n);
    if (!p) return;
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

void bw_u8(ByteWriter *w, uint8_t v) { bw_uint(w, v, 1); }
void bw_u16(ByteWriter *w, uint16_t v) { bw_uint(w, v, 2); }
void bw_u32(ByteWriter *w, uint32_t v) { bw_uint(w, v, 4); }
void bw_u64(ByteWriter *w, uint64_t v) { bw_uint(w, v, 8); }

void bw_f32(ByteWriter *w, float v) {
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    bw_u32(w, bits);
}

void bw_bytes(ByteWriter *w, const void *p, size_t n) {
    if (n == 0) return;
    uint8_t *dst = bw_reserve(w, n);
    if (dst) memcpy(dst, p, n);
}

void bw_str(ByteWriter *w, const char *s) {
    size_t n = s ? strlen(s) : 0;
    if (n > UINT16_MAX) {
        w->ok = 0;
        return;
    }
    bw_u16(w, (uint16_t)n);
    bw_bytes(w, s, n);
}

/* ----------------------------------------------------------------------------
 * Byte reader */

void br_init(ByteReader *r, const uint8_t *buf, size_t len) {
    r->buf = buf;
    r->len = buf ? len : 0;
    r->pos = 0;
    r->ok = 1;
}

size_t br_remaining(const ByteReader *r) { return r->ok ? r->len - r->pos : 0; }

const uint8_t *br_bytes(ByteReader *r, size_t n) {
    if (!r->ok || n > r->len - r->pos) {
        r->ok = 0;
        return NULL;
    }
    const uint8_t *p = r->buf + r->pos;
    r->pos += n;
    return p;
}

static uint64_t br_uint(ByteReader *r, size_t n) {
    const uint8_t *p = br_bytes(r, n);
    if (!p) return 0;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

uint8_t br_u8(ByteReader *r) { return (uint8_t)br_uint(r, 1); }
uint16_t br_u16(ByteReader *r) { return (uint16_t)br_uint(r, 2); }
uint32_t br_u32(ByteReader *r) { return (uint32_t)br_uint(r, 4); }
uint64_t br_u64(ByteReader *r) { return br_uint(r, 8); }

float br_f32(ByteReader *r) {
    uint32_t bits = br_u32(r);
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* ----------------------------------------------------------------------------
 * REQUEST */

static uint32_t u32le_at(const uint8_t *p, uint32_t i) {
    const uint8_t *q = p + 4 * (size_t)i;
    return (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 | (uint32_t)q[3] << 24;
}

int proto_parse_request(const uint8_t *body, size_t len, Request *req, const char **why) {
    const char *reason = NULL;
    ByteReader r;
    br_init(&r, body, len);
    memset(req, 0, sizeof *req);

    req->max_new_tokens = br_u32(&r);
    req->flags = br_u32(&r);
    req->temperature = br_f32(&r);
    req->top_k = br_u32(&r);
    req->top_p = br_f32(&r);
    req->seed = br_u64(&r);
    req->n_prompt = br_u32(&r);
    if (!r.ok) { reason = "body shorter than the fixed fields"; goto fail; }
    if (req->n_prompt < 1) { reason = "n_prompt is 0"; goto fail; }
    if (req->n_prompt > br_remaining(&r) / 4) { reason = "n_prompt exceeds the body"; goto fail; }
    req->prompt_le = br_bytes(&r, 4 * (size_t)req->n_prompt);
    req->n_stop = br_u32(&r);
    if (!r.ok) { reason = "body ends before n_stop"; goto fail; }
    if (req->n_stop > br_remaining(&r) / 4) { reason = "n_stop exceeds the body"; goto fail; }
    req->stop_le = req->n_stop ? br_bytes(&r, 4 * (size_t)req->n_stop) : NULL;
    if (!r.ok) { reason = "body too short"; goto fail; }
    if (br_remaining(&r) != 0) { reason = "trailing bytes after the stop list"; goto fail; }

    if (req->max_new_tokens < 1) { reason = "max_new_tokens is 0"; goto fail; }
    if (!isfinite(req->temperature) || req->temperature < 0.0f) {
        reason = "temperature must be finite and >= 0";
        goto fail;
    }
    if (!isfinite(req->top_p) || req->top_p < 0.0f || req->top_p > 1.0f) {
        reason = "top_p must be in [0, 1]";
        goto fail;
    }
    if (why) *why = NULL;
    return 0;

fail:
    if (why) *why = reason;
    memset(req, 0, sizeof *req);
    return -1;
}

uint32_t request_prompt_at(const Request *req, uint32_t i) {
    return i < req->n_prompt ? u32le_at(req->prompt_le, i) : 0;
}

uint32_t request_stop_at(const Request *req, uint32_t i) {
    return i < req->n_stop ? u32le_at(req->stop_le, i) : 0;
}

int request_is_stop(const Request *req, uint32_t token) {
    for (uint32_t i = 0; i < req->n_stop; i++)
        if (u32le_at(req->stop_le, i) == token) return 1;
    return 0;
}

/* ----------------------------------------------------------------------------
 * Board -> host bodies */

static long bw_result(const ByteWriter *w) { return w->ok ? (long)w->len : -1; }

long proto_pack_hello(uint8_t *out, size_t cap, const Hello *h) {
    ByteWriter w;
    bw_init(&w, out, cap);
    bw_u16(&w, h->proto);
    bw_str(&w, h->firmware);
    bw_str(&w, h->board);
    bw_bytes(&w, h->model_sha256, PROTO_SHA256_LEN);
    bw_u32(&w, h->max_seq_len);
    bw_u32(&w, h->vocab_size);
    bw_u32(&w, h->threads);
    bw_f32(&w, h->load_ms);
    return bw_result(&w);
}

long proto_pack_token(uint8_t *out, size_t cap, const TokenMsg *t) {
    ByteWriter w;
    bw_init(&w, out, cap);
    bw_u32(&w, t->index);
    bw_u32(&w, t->token);
    bw_u64(&w, t->t_us);
    if (t->n_top > 0) {
        uint8_t n = t->n_top > TOKEN_MAX_TOP ? TOKEN_MAX_TOP : t->n_top;
        bw_f32(&w, t->logit);
        bw_u8(&w, n);
        for (uint8_t i = 0; i < n; i++) {
            bw_u32(&w, t->top_id[i]);
            bw_f32(&w, t->top_logit[i]);
        }
    }
    return bw_result(&w);
}

long proto_pack_stats(uint8_t *out, size_t cap, const Stats *s) {
    ByteWriter w;
    bw_init(&w, out, cap);
    bw_u32(&w, s->prompt_tokens);
    bw_u32(&w, s->generated);
    bw_u8(&w, s->stop);
    bw_f32(&w, s->load_ms);
    bw_f32(&w, s->ttft_ms);
    bw_f32(&w, s->prefill_tok_s);
    bw_f32(&w, s->decode_tok_s);
    bw_u64(&w, s->peak_rss_kb);
    bw_u32(&w, s->decode_calls);
    bw_u32(&w, s->draft_calls);
    bw_u32(&w, s->drafted);
    bw_u32(&w, s->accepted);
    bw_u32(&w, s->draft_model_calls);
    bw_u32(&w, s->kept);
    return bw_result(&w);
}

long proto_pack_error(uint8_t *out, size_t cap, uint16_t code, const char *message) {
    if (!message) message = "";
    size_t n = strlen(message);
    if (n > PROTO_MAX_ERROR_MESSAGE) {
        n = PROTO_MAX_ERROR_MESSAGE;
        while (n > 0 && ((uint8_t)message[n] & 0xC0) == 0x80) n--; /* not inside a UTF-8 sequence */
    }
    ByteWriter w;
    bw_init(&w, out, cap);
    bw_u16(&w, code);
    bw_u16(&w, (uint16_t)n);
    bw_bytes(&w, message, n);
    return bw_result(&w);
}

void proto_fill_logits(TokenMsg *t, const float *logits, uint32_t vocab, uint32_t token) {
    t->logit = token < vocab ? logits[token] : 0.0f;
    t->n_top = 0;
    for (uint32_t v = 0; v < vocab; v++) { /* insertion into a short sorted list */
        float x = logits[v];
        int at = t->n_top;
        while (at > 0 && x > t->top_logit[at - 1]) at--;
        if (at >= TOKEN_MAX_TOP) continue;
        int last = t->n_top < TOKEN_MAX_TOP ? t->n_top : TOKEN_MAX_TOP - 1;
        for (int j = last; j > at; j--) {
            t->top_id[j] = t->top_id[j - 1];
            t->top_logit[j] = t->top_logit[j - 1];
        }
        t->top_id[at] = v;
        t->top_logit[at] = x;
        if (t->n_top < TOKEN_MAX_TOP) t->n_top++;
    }
}

void proto_fill_rates(Stats *st, uint32_t prefilled, uint32_t generated, uint64_t t_request, uint64_t t_first,
                      uint64_t t_last) {
    double ttft_s = (double)(t_first - t_request) / 1e6;
    double decode_s = (double)(t_last - t_first) / 1e6;
    st->ttft_ms = (float)(ttft_s * 1e3);
    st->prefill_tok_s = ttft_s > 0 ? (float)((double)prefilled / ttft_s) : 0.0f;
    st->decode_tok_s = (generated > 1 && decode_s > 0) ? (float)((double)(generated - 1) / decode_s) : 0.0f;
}
