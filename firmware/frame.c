/* frame.c - edgelm serial framing: COBS + CRC-32 (see frame.h and docs/protocol.md). */
#include "frame.h"

#include <string.h>

const char *frame_result_name(int result) {
    switch (result) {
    case FRAME_NONE: return "NONE";
    case FRAME_READY: return "READY";
    case FRAME_ERR_BAD_FRAME: return "BAD_FRAME";
    case FRAME_ERR_BAD_CRC: return "BAD_CRC";
    case FRAME_ERR_TOO_LONG: return "TOO_LONG";
    case FRAME_ERR_NO_SPACE: return "NO_SPACE";
    case FRAME_ERR_ARG: return "ARG";
    default: return "UNKNOWN";
    }
}

/* ----------------------------------------------------------------------------
 * CRC-32/ISO-HDLC, reflected polynomial 0xEDB88320, one nibble at a time */

static const uint32_t crc32_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
    0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
    0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu,
};

uint32_t crc32_update(uint32_t crc, const uint8_t *data, size_t len) {
    crc = ~crc;
    for (size_t i = 0; i < len; i++) {
        crc = (crc >> 4) ^ crc32_nibble[(crc ^ data[i]) & 0x0Fu];
        crc = (crc >> 4) ^ crc32_nibble[(crc ^ ((uint32_t)data[i] >> 4)) & 0x0Fu];
    }
    return ~crc;
}

/* ----------------------------------------------------------------------------
 * COBS encoder, one byte at a time (so a frame is encoded without assembling the
 * payload first). A block is a code byte followed by up to 254 non-zero bytes; this is
 * Cheshire & Baker's StuffData: a new block opens after every zero and every full block,
 * so data ending in a full block gets a final 0x01 code. */

typedef struct {
    uint8_t *out;
    size_t cap;      /* bytes available at out */
    size_t len;      /* bytes written, including the open block's code slot */
    size_t code_at;  /* index of the open block's code byte */
    uint8_t code;    /* 1 + data bytes in the open block */
    int error;       /* FRAME_ERR_NO_SPACE once out was too small */
} CobsEncoder;

static void cobs_open_block(CobsEncoder *e) {
    if (e->len >= e->cap) { e->error = FRAME_ERR_NO_SPACE; return; }
    e->code_at = e->len++;
    e->code = 1;
}

static void cobs_encoder_init(CobsEncoder *e, uint8_t *out, size_t cap) {
    e->out = out;
    e->cap = cap;
    e->len = 0;
    e->error = 0;
    cobs_open_block(e);
}

static void cobs_put(CobsEncoder *e, uint8_t byte) {
    if (e->error) return;
    if (byte != 0) {
        if (e->len >= e->cap) { e->error = FRAME_ERR_NO_SPACE; return; }
        e->out[e->len++] = byte;
        if (++e->code != 0xFF) return;
    }
    e->out[e->code_at] = e->code; /* a zero, or a full block: close it, open the next */
    cobs_open_block(e);
}

static void cobs_put_bytes(CobsEncoder *e, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n && !e->error; i++) cobs_put(e, p[i]);
}

/* Closes the open block. Returns the encoded length or FRAME_ERR_NO_SPACE. */
static long cobs_finish(CobsEncoder *e) {
    if (e->error) return e->error;
    e->out[e->code_at] = e->code;
    return (long)e->len;
}

long cobs_encode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap) {
    if ((src == NULL && len > 0) || dst == NULL) return FRAME_ERR_ARG;
    CobsEncoder e;
    cobs_encoder_init(&e, dst, cap);
    cobs_put_bytes(&e, src, len);
    return cobs_finish(&e);
}

long cobs_decode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap) {
    if ((src == NULL || dst == NULL) && len > 0) return FRAME_ERR_ARG;
    size_t in = 0, out = 0;
    while (in < len) {
        uint8_t code = src[in++];
        if (code == 0) return FRAME_ERR_BAD_FRAME;
        size_t n = (size_t)code - 1; /* data bytes in this block */
        if (n > len - in) return FRAME_ERR_BAD_FRAME; /* truncated block */
        if (n > cap - out) return FRAME_ERR_NO_SPACE;
        for (size_t k = 0; k < n; k++) {
            uint8_t b = src[in + k];
            if (b == 0) return FRAME_ERR_BAD_FRAME;
            dst[out + k] = b; /* out + k < in + k: safe when dst == src */
        }
        in += n;
        out += n;
        if (code != 0xFF && in < len) { /* the block ended at a zero */
            if (out >= cap) return FRAME_ERR_NO_SPACE;
            dst[out++] = 0;
        }
    }
    return (long)out;
}

/* ----------------------------------------------------------------------------
 * Frames */

static void put_u32le(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_u32le(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

size_t frame_wire_bound(size_t body_len) {
    size_t payload = body_len + FRAME_MIN_PAYLOAD;
    return COBS_MAX_ENCODED(payload) + 1;
}

long frame_encode(uint8_t type, uint32_t seq, const uint8_t *body, size_t body_len,
                  uint8_t *out, size_t out_cap) {
    if ((body == NULL && body_len > 0) || out == NULL) return FRAME_ERR_ARG;
    if (body_len > FRAME_MAX_BODY) return FRAME_ERR_TOO_LONG;

    uint8_t header[FRAME_HEADER_LEN];
    header[0] = type;
    put_u32le(header + 1, seq);
    uint8_t crc_le[FRAME_CRC_LEN];
    uint32_t crc = crc32_update(0, header, sizeof header);
    crc = crc32_update(crc, body, body_len);
    put_u32le(crc_le, crc);

    if (out_cap < 1) return FRAME_ERR_NO_SPACE;
    CobsEncoder e;
    cobs_encoder_init(&e, out, out_cap - 1); /* keep one byte for the delimiter */
    cobs_put_bytes(&e, header, sizeof header);
    cobs_put_bytes(&e, body, body_len);
    cobs_put_bytes(&e, crc_le, sizeof crc_le);
    long n = cobs_finish(&e);
    if (n < 0) return n;
    out[n] = 0x00;
    return n + 1;
}

/* ----------------------------------------------------------------------------
 * Streaming decoder */

void frame_reader_init(FrameReader *r) {
    r->len = 0;
    r->discarding = 0;
}

/* Decodes the complete encoded frame in r->buf (in place) and checks it. */
static int frame_reader_finish(FrameReader *r, Frame *out) {
    long n = cobs_decode(r->buf, r->len, r->buf, sizeof r->buf);
    r->len = 0;
    if (n == FRAME_ERR_NO_SPACE) return FRAME_ERR_TOO_LONG; /* cannot happen: decoded <= encoded */
    if (n < 0) return FRAME_ERR_BAD_FRAME;
    size_t plen = (size_t)n;
    if (plen > FRAME_MAX_PAYLOAD) return FRAME_ERR_TOO_LONG;
    if (plen < FRAME_MIN_PAYLOAD) return FRAME_ERR_BAD_FRAME;
    size_t body_len = plen - FRAME_MIN_PAYLOAD;
    uint32_t want = get_u32le(r->buf + plen - FRAME_CRC_LEN);
    if (crc32_update(0, r->buf, plen - FRAME_CRC_LEN) != want) return FRAME_ERR_BAD_CRC;
    out->type = r->buf[0];
    out->seq = get_u32le(r->buf + 1);
    out->body = r->buf + FRAME_HEADER_LEN;
    out->body_len = body_len;
    return FRAME_READY;
}

int frame_reader_push(FrameReader *r, uint8_t byte, Frame *out) {
    if (byte == 0x00) {
        if (r->discarding) { /* end of an oversized frame, already reported */
            r->discarding = 0;
            r->len = 0;
            return FRAME_NONE;
        }
        if (r->len == 0) return FRAME_NONE; /* empty frame: just a delimiter */
        return frame_reader_finish(r, out);
    }
    if (r->discarding) return FRAME_NONE;
    if (r->len >= sizeof r->buf) {
        r->discarding = 1;
        r->len = 0;
        return FRAME_ERR_TOO_LONG;
    }
    r->buf[r->len++] = byte;
    return FRAME_NONE;
}

int frame_reader_feed(FrameReader *r, const uint8_t *data, size_t len, size_t *consumed,
                      Frame *out) {
    size_t i = 0;
    int result = FRAME_NONE;
    if (data == NULL) len = 0;
    while (i < len && result == FRAME_NONE) result = frame_reader_push(r, data[i++], out);
    if (consumed) *consumed = i;
    return result;
}
