/* frame.h - edgelm serial framing: COBS + CRC-32, as in docs/protocol.md.
 *
 *   wire frame = COBS(payload) 0x00
 *   payload    = type:u8  seq:u32  body:bytes  crc:u32      (little-endian)
 *
 * Pure C11: no malloc, no I/O. Shared by the runner and tests/fuzz/frame_harness.c.
 */
#ifndef EDGELM_FRAME_H
#define EDGELM_FRAME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ----------------------------------------------------------------------------
 * Limits (bytes) */

#define FRAME_MAX_PAYLOAD 16384 /* type + seq + body + crc */
#define FRAME_HEADER_LEN 5      /* type:u8 seq:u32 */
#define FRAME_CRC_LEN 4         /* crc:u32 */
#define FRAME_MIN_PAYLOAD (FRAME_HEADER_LEN + FRAME_CRC_LEN)      /* 9 */
#define FRAME_MAX_BODY (FRAME_MAX_PAYLOAD - FRAME_MIN_PAYLOAD)   /* 16375 */
#define FRAME_MAX_ENCODED (FRAME_MAX_PAYLOAD + 66) /* COBS bytes, without the 0x00 */
#define FRAME_MAX_WIRE (FRAME_MAX_ENCODED + 1)     /* with the 0x00 delimiter */

/* Worst-case COBS length of n input bytes (without the delimiter): one code byte per
 * started block of 254 bytes, at least one. */
#define COBS_MAX_ENCODED(n) ((n) + (n) / 254 + 1)

/* ----------------------------------------------------------------------------
 * Results. Negative values are errors; the first three match the protocol's ERROR
 * codes BAD_FRAME (1), BAD_CRC (2) and TOO_LONG (3) with the sign flipped. */

enum {
    FRAME_NONE = 0,          /* reader: no complete frame yet */
    FRAME_READY = 1,         /* reader: *out holds a frame */
    FRAME_ERR_BAD_FRAME = -1, /* COBS decoding failed, or payload shorter than 9 bytes */
    FRAME_ERR_BAD_CRC = -2,   /* CRC mismatch */
    FRAME_ERR_TOO_LONG = -3,  /* frame over the limit (reader), body over FRAME_MAX_BODY (encode) */
    FRAME_ERR_NO_SPACE = -4,  /* output buffer too small */
    FRAME_ERR_ARG = -5,       /* NULL pointer with a non-zero length */
};

/* Name of a FRAME_* result ("BAD_FRAME", ...), for logs and the fuzz harness. */
const char *frame_result_name(int result);

/* ----------------------------------------------------------------------------
 * CRC-32/ISO-HDLC (zlib's crc32): crc32_update(0, p, n) == zlib.crc32(p), and
 * crc32_update(crc32_update(0, a, na), b, nb) == zlib.crc32(a + b). */

uint32_t crc32_update(uint32_t crc, const uint8_t *data, size_t len);

/* ----------------------------------------------------------------------------
 * COBS (Cheshire & Baker). Both return the output length, or a negative FRAME_ERR_*.
 * cobs_encode writes no delimiter and follows the paper's StuffData exactly: data that
 * ends with a full 254-byte block gets a final 0x01 code (as toolchain/link/framing.py
 * does). cobs_decode accepts both that and the shorter form, rejects a 0x00 or a
 * truncated block with FRAME_ERR_BAD_FRAME; dst may equal src (decoding in place). */

long cobs_encode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap);
long cobs_decode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap);

/* ----------------------------------------------------------------------------
 * Frames */

/* A decoded frame. body points into the FrameReader that produced it and stays valid
 * until the next call that feeds that reader. */
typedef struct {
    uint8_t type;
    uint32_t seq;
    const uint8_t *body;
    size_t body_len; /* bytes, <= FRAME_MAX_BODY */
} Frame;

/* Wire bytes frame_encode needs at most for a body of body_len bytes (with the 0x00). */
size_t frame_wire_bound(size_t body_len);

/* Encodes one frame (COBS + 0x00) into out. Returns the wire length (> 0) or
 * FRAME_ERR_TOO_LONG (body_len > FRAME_MAX_BODY), FRAME_ERR_NO_SPACE, FRAME_ERR_ARG. */
long frame_encode(uint8_t type, uint32_t seq, const uint8_t *body, size_t body_len,
                  uint8_t *out, size_t out_cap);

/* Streaming decoder. Bytes accumulate until a 0x00; the frame is then COBS-decoded in
 * place and checked. Empty frames (0x00 right after 0x00, or at the start) are
 * delimiters, not frames, and are skipped silently. When the encoded bytes exceed
 * FRAME_MAX_ENCODED the reader reports FRAME_ERR_TOO_LONG at once and discards
 * everything up to the next 0x00. */
typedef struct {
    uint8_t buf[FRAME_MAX_ENCODED]; /* encoded bytes of the frame in progress */
    size_t len;                     /* bytes used in buf */
    int discarding;                 /* 1 after TOO_LONG, until the next 0x00 */
} FrameReader;

void frame_reader_init(FrameReader *r);

/* Feeds one byte. Returns FRAME_NONE, FRAME_READY (*out filled) or a FRAME_ERR_*. */
int frame_reader_push(FrameReader *r, uint8_t byte, Frame *out);

/* Feeds up to len bytes, stopping right after the first byte that produces an event.
 * *consumed is set to the number of bytes used; call again with the rest. */
int frame_reader_feed(FrameReader *r, const uint8_t *data, size_t len, size_t *consumed,
                      Frame *out);

#ifdef __cplusplus
}
#endif

#endif /* EDGELM_FRAME_H */
