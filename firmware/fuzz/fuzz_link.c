/* fuzz_link.c - libFuzzer harness for the runner's input path: firmware/frame.c (the
 * FrameReader) and firmware/protocol.c (the REQUEST parser), driven the way
 * firmware/runner.cpp drives them.
 *
 * Built by firmware/fuzz/build.sh with clang -fsanitize=fuzzer,address,undefined; run by
 * firmware/fuzz/fuzz.sh (`make fuzz`). Seeds: firmware/fuzz/corpus/ (make_corpus.py).
 *
 * One input = a header + the bytes the host sends:
 *
 *   byte 0       bits 0-2: n, the chunk-size bytes that follow (n = 0: reads of RX_CAP bytes)
 *                bit 3: the rest is records to frame first (below); other bits are ignored
 *   bytes 1..n   chunk sizes, used in turn: s < 128 -> s + 1 bytes, else (s - 127) * 32 bytes
 *   the rest     the byte stream; each chunk is one serial_read() of the runner
 *
 * With bit 3 the rest is records  type:u8 len:u16le body[len]  (len cut to what is left) that
 * frame_encode turns into the stream, seq counting up from 0: a mutated body then reaches the
 * REQUEST parser with a good CRC, which mutating the wire bytes almost never gives. The raw
 * form is for damaged streams.
 *
 * For each chunk the runner's loop is replayed: frame_reader_feed until the chunk is used
 * up, each event handled as handle_event() does (an ERROR for a bad frame, QUIT, unknown
 * types, the REQUEST parser, then the checks serve_request makes before the model runs),
 * stopping at a QUIT. Nothing is allocated per input.
 *
 * Invariants, abort() when one fails (libFuzzer then saves the input):
 *   - frame_reader_feed consumes >= 1 byte, all of them when there is no event, and stops
 *     right after the byte that gives one
 *   - events happen exactly where the framing rules put them (check_span, with memchr on the
 *     consumed bytes): at each 0x00 that ends a non-empty, non-discarded frame, and at the
 *     (FRAME_MAX_ENCODED + 1)th byte without a 0x00 (TOO_LONG); nowhere else
 *   - the reader reports only READY, BAD_FRAME, BAD_CRC, TOO_LONG; each maps to an ERROR code
 *   - a decoded frame re-encodes to the wire bytes it came from: encode(decode(x)) == x, or
 *     x lacked the final 0x01 code after a full 254-byte COBS block (the one shorter form
 *     the decoder accepts)
 *   - proto_parse_request accepts exactly the bodies an independent check accepts, and an
 *     accepted request matches its body field by field, with n_prompt + n_stop ids filling
 *     the body exactly (<= PROTO_MAX_REQUEST_IDS); a refusal gives a reason
 *   - every ERROR the runner would send has a protocol code and a reason
 *   - frame_encode takes every record body up to FRAME_MAX_BODY and refuses longer ones
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "protocol.h"

/* ----------------------------------------------------------------------------
 * Constants */

#define RX_CAP 4096          /* bytes per read: runner.cpp's rx[4096] */
#define HDR_CHUNK_SIZES 0x07 /* byte 0: chunk-size bytes that follow */
#define HDR_RECORDS 0x08     /* byte 0: the stream is records to frame first */
#define RECORD_HEAD 3        /* type:u8 len:u16le */
#define RECORDS_WIRE_CAP (4 * FRAME_MAX_WIRE) /* bytes of framed records; later records are dropped */
#define MODEL_MAX_SEQ_LEN 128 /* tokens: the stand-in model's limits for serve_request's checks */
#define MODEL_VOCAB 256      /* tokens */
#define REQ_PROMPT_AT 32     /* body offset of the prompt ids (after n_prompt) */

#define CHECK(cond, what)                                                                    \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "fuzz_link: invariant failed: %s (%s:%d)\n", what, __FILE__,     \
                    __LINE__);                                                               \
            abort();                                                                         \
        }                                                                                    \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ----------------------------------------------------------------------------
 * State: the runner's Link, the framing model and scratch, static (~100 KiB) */

typedef struct {
    FrameReader reader;          /* runner.cpp's Link.reader, fed chunk by chunk as it is */
    /* the framing rules (check_span) */
    size_t seg_start;            /* stream offset where the frame in progress began */
    int discarding;              /* 1 from a TOO_LONG to the next 0x00 */
    uint8_t reencoded[FRAME_MAX_WIRE]; /* encode(decode(x)) */
    uint8_t records_wire[RECORDS_WIRE_CAP]; /* the stream made from records */
} Harness;

static Harness H;

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static float lef32(const uint8_t *p) {
    uint32_t bits = le32(p);
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* ----------------------------------------------------------------------------
 * Replies: send_error of runner.cpp up to the message. The code must be one the protocol
 * names and the reason (printed with %s) must exist. The reply itself is not built: it
 * parses nothing the host sent, and formatting and packing it would cost more per input
 * than the parsing does. */

static void send_error(uint16_t code, const char *reason) {
    CHECK(code >= ERR_BAD_FRAME && code <= ERR_RUNTIME, "an ERROR code the protocol does not name");
    CHECK(reason != NULL, "an ERROR without a reason");
}

/* ----------------------------------------------------------------------------
 * REQUEST: an independent acceptance check, and the parsed fields against the body */

static int request_acceptable(const uint8_t *b, size_t len) {
    if (len < REQ_PROMPT_AT + 4) return 0;
    uint64_t n_prompt = le32(b + 28);
    if (n_prompt == 0 || REQ_PROMPT_AT + 4 * n_prompt + 4 > len) return 0;
    uint64_t n_stop = le32(b + REQ_PROMPT_AT + 4 * n_prompt);
    if (len != REQ_PROMPT_AT + 4 * n_prompt + 4 + 4 * n_stop) return 0;
    float temperature = lef32(b + 8), top_p = lef32(b + 16);
    if (le32(b) == 0) return 0;
    if (!isfinite(temperature) || temperature < 0.0f) return 0;
    if (!isfinite(top_p) || top_p < 0.0f || top_p > 1.0f) return 0;
    return 1;
}

static void check_request(const Request *r, const uint8_t *b, size_t len) {
    uint64_t ids = (uint64_t)r->n_prompt + r->n_stop;
    CHECK(ids <= PROTO_MAX_REQUEST_IDS, "more ids than a body can hold");
    CHECK(PROTO_REQUEST_FIXED_LEN + 4 * ids == len, "ids do not fill the body exactly");
    CHECK(r->max_new_tokens == le32(b) && r->max_new_tokens >= 1, "max_new_tokens");
    CHECK(r->flags == le32(b + 4), "flags");
    CHECK(memcmp(&r->temperature, b + 8, 4) == 0 && r->temperature >= 0.0f, "temperature");
    CHECK(r->top_k == le32(b + 12), "top_k");
    CHECK(memcmp(&r->top_p, b + 16, 4) == 0 && r->top_p >= 0.0f && r->top_p <= 1.0f, "top_p");
    CHECK(r->seed == ((uint64_t)le32(b + 24) << 32 | le32(b + 20)), "seed");
    CHECK(r->n_prompt >= 1 && r->n_prompt == le32(b + 28), "n_prompt");
    CHECK(r->prompt_le == b + REQ_PROMPT_AT, "prompt ids are not where the body has them");
    const uint8_t *stop = b + REQ_PROMPT_AT + 4 * (size_t)r->n_prompt + 4;
    CHECK(r->n_stop == le32(stop - 4), "n_stop");
    CHECK(r->n_stop ? r->stop_le == stop : r->stop_le == NULL, "stop ids are not where the body has them");
    /* a fixed sample of positions: first, last, middle (the whole list would cost O(body)) */
    uint32_t at[3] = {0, r->n_prompt - 1, r->n_prompt / 2};
    for (int k = 0; k < 3; k++)
        CHECK(request_prompt_at(r, at[k]) == le32(b + REQ_PROMPT_AT + 4 * (size_t)at[k]), "prompt id");
    CHECK(request_prompt_at(r, r->n_prompt) == 0, "prompt id past the end");
    if (r->n_stop) {
        uint32_t last = request_stop_at(r, r->n_stop - 1);
        CHECK(last == le32(stop + 4 * ((size_t)r->n_stop - 1)), "stop id");
        CHECK(request_is_stop(r, last), "a stop id is not a stop");
    }
    CHECK(request_stop_at(r, r->n_stop) == 0, "stop id past the end");
}

/* serve_request up to the model: the length and vocabulary checks, one stop lookup. */
static void serve_request(const Request *req) {
    if ((uint64_t)req->n_prompt + req->max_new_tokens > (uint64_t)MODEL_MAX_SEQ_LEN) {
        send_error(ERR_SEQ_TOO_LONG, "prompt + max_new_tokens exceeds max_seq_len");
        return;
    }
    for (uint32_t i = 0; i < req->n_prompt; i++) { /* n_prompt < MODEL_MAX_SEQ_LEN here */
        uint32_t t = request_prompt_at(req, i);
        if (t >= MODEL_VOCAB) {
            send_error(ERR_BAD_REQUEST, "a prompt id is not below vocab_size");
            return;
        }
    }
    int use_stop = (req->flags & REQ_FLAG_IGNORE_STOP) == 0;
    if (use_stop) (void)request_is_stop(req, request_prompt_at(req, 0));
}

/* ----------------------------------------------------------------------------
 * handle_event of runner.cpp. Returns 1 when the host asked to quit. */

static int handle_event(int event, const Frame *f) {
    if (event < 0) {
        uint16_t code = proto_error_for_frame(event);
        CHECK(event == FRAME_ERR_BAD_FRAME || event == FRAME_ERR_BAD_CRC || event == FRAME_ERR_TOO_LONG,
              "the reader reported an error it never should");
        CHECK(code == (uint16_t)-event, "reader error and ERROR code disagree");
        send_error(code, frame_result_name(event));
        return 0;
    }
    CHECK(event == FRAME_READY, "unknown reader event");
    CHECK(f->body_len <= FRAME_MAX_BODY, "body longer than FRAME_MAX_BODY");

    if (f->type == MSG_QUIT) {
        if (f->body_len != 0) {
            send_error(ERR_BAD_REQUEST, "QUIT carries body bytes");
            return 0;
        }
        return 1;
    }
    if (f->type == MSG_CANCEL) { /* no generation under way here: ignored */
        return 0;
    }
    if (f->type != MSG_REQUEST) {
        send_error(ERR_BAD_REQUEST, "unknown message type");
        return 0;
    }
    Request req;
    const char *why = NULL;
    int parsed = proto_parse_request(f->body, f->body_len, &req, &why);
    CHECK(parsed == 0 || parsed == -1, "proto_parse_request result");
    CHECK((parsed == 0) == request_acceptable(f->body, f->body_len),
          "proto_parse_request and the independent check disagree");
    if (parsed != 0) {
        send_error(ERR_BAD_REQUEST, why);
        return 0;
    }
    CHECK(why == NULL, "an accepted REQUEST with a reason");
    check_request(&req, f->body, f->body_len);
    serve_request(&req);
    return 0;
}

/* ----------------------------------------------------------------------------
 * The framing rules, checked span by span: where the reader owes an event and which bytes
 * a frame came from. A 0x00 ends a frame unless it follows another 0x00 (an empty frame)
 * or ends a discarded one; FRAME_MAX_ENCODED + 1 bytes without a 0x00 are TOO_LONG at once,
 * then everything up to the next 0x00 is discarded. */

/* A 0x00 at stream offset z that must not give an event. */
static void model_quiet_zero(Harness *h, size_t z) {
    CHECK(h->discarding || z == h->seg_start, "a frame ended without an event");
    h->discarding = 0;
    h->seg_start = z + 1;
}

/* stream[a .. b) was consumed by one frame_reader_feed call that returned event. */
static void check_span(Harness *h, const uint8_t *stream, size_t a, size_t b, int event, const Frame *f) {
    const uint8_t *z;
    while (a < b - 1 && (z = memchr(stream + a, 0x00, b - 1 - a)) != NULL) { /* before the last byte */
        model_quiet_zero(h, (size_t)(z - stream));
        a = (size_t)(z - stream) + 1;
    }
    uint8_t last = stream[b - 1];
    if (event == FRAME_NONE) {
        if (last == 0x00)
            model_quiet_zero(h, b - 1);
        else
            CHECK(h->discarding || b - h->seg_start <= FRAME_MAX_ENCODED, "no TOO_LONG when one was due");
        return;
    }
    if (event == FRAME_ERR_TOO_LONG && last != 0x00) { /* (at a 0x00: decoded over the limit) */
        CHECK(!h->discarding && b - h->seg_start == FRAME_MAX_ENCODED + 1, "TOO_LONG at the wrong byte");
        h->discarding = 1;
        return;
    }
    size_t seg = h->seg_start; /* a frame event: the frame is stream[seg .. b), its 0x00 included */
    CHECK(last == 0x00 && !h->discarding && b - 1 > seg && b - 1 - seg <= FRAME_MAX_ENCODED,
          "a frame event without a frame");
    h->seg_start = b;
    if (event != FRAME_READY) return;

    /* encode(decode(x)) == x */
    const uint8_t *x = stream + seg;
    size_t n = b - seg;
    long m = frame_encode(f->type, f->seq, f->body, f->body_len, h->reencoded, sizeof h->reencoded);
    CHECK(m > 0 && (size_t)m <= frame_wire_bound(f->body_len), "a decoded frame does not re-encode");
    int same = (size_t)m == n && memcmp(h->reencoded, x, n) == 0;
    int short_form = (size_t)m == n + 1 && h->reencoded[n - 1] == 0x01 &&
                     memcmp(h->reencoded, x, n - 1) == 0;
    CHECK(same || short_form, "encode(decode(x)) != x");
}

/* ----------------------------------------------------------------------------
 * Records: type:u8 len:u16le body[len] -> frames, seq counting up from 0 */

static size_t frame_records(const uint8_t *p, size_t len, uint8_t *out, size_t cap) {
    size_t at = 0, n = 0;
    for (uint32_t seq = 0; len - at >= RECORD_HEAD; seq++) {
        uint8_t type = p[at];
        size_t body_len = (size_t)p[at + 1] | (size_t)p[at + 2] << 8;
        at += RECORD_HEAD;
        if (body_len > len - at) body_len = len - at;
        long w = frame_encode(type, seq, p + at, body_len, out + n, cap - n);
        at += body_len;
        if (body_len > FRAME_MAX_BODY) {
            CHECK(w == FRAME_ERR_TOO_LONG, "frame_encode took a body over FRAME_MAX_BODY");
            continue;
        }
        if (w == FRAME_ERR_NO_SPACE && frame_wire_bound(body_len) > cap - n) break; /* scratch full */
        CHECK(w > 0 && (size_t)w <= frame_wire_bound(body_len), "frame_encode refused a legal body");
        n += (size_t)w;
    }
    return n;
}

/* ----------------------------------------------------------------------------
 * libFuzzer entry: the runner's read loop */

static size_t chunk_size(uint8_t s) { return s < 128 ? (size_t)s + 1 : (size_t)(s - 127) * 32; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    size_t n_sizes = data[0] & HDR_CHUNK_SIZES;
    if (size < 1 + n_sizes) return 0;
    Harness *h = &H;
    const uint8_t *sizes = data + 1;
    const uint8_t *stream = data + 1 + n_sizes;
    size_t len = size - 1 - n_sizes;
    if (data[0] & HDR_RECORDS) {
        len = frame_records(stream, len, h->records_wire, sizeof h->records_wire);
        stream = h->records_wire;
    }

    frame_reader_init(&h->reader);
    h->seg_start = 0;
    h->discarding = 0;

    int quit = 0;
    size_t base = 0;
    for (size_t k = 0; base < len && !quit; k++) {
        size_t n = n_sizes ? chunk_size(sizes[k % n_sizes]) : RX_CAP; /* one serial_read() */
        if (n > len - base) n = len - base;
        const uint8_t *rx = stream + base;
        size_t off = 0;
        while (off < n && !quit) {
            size_t used = 0;
            Frame f;
            int event = frame_reader_feed(&h->reader, rx + off, n - off, &used, &f);
            CHECK(used >= 1 && used <= n - off, "frame_reader_feed consumed nothing or too much");
            CHECK(event != FRAME_NONE || used == n - off, "frame_reader_feed stopped without an event");
            check_span(h, stream, base + off, base + off + used, event, &f);
            off += used;
            if (event != FRAME_NONE) quit = handle_event(event, &f);
        }
        base += n;
    }
    return 0;
}
