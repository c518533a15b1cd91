/* frame_harness.c - drives firmware/frame.c and firmware/protocol.c from the command line.
 *
 * How the Python tests use it: tests/fuzz/build_harness.sh OUT compiles this file with
 * gcc -fsanitize=address,undefined (errors abort) to OUT; the tests run OUT in one of the
 * modes below and compare stdout with toolchain/link/framing.py and protocol.py. Exit
 * status 0 = ran (whatever the verdict printed), 1 = an invariant failed (fuzz), 2 = bad
 * arguments; a sanitizer finding aborts with a non-zero status.
 *
 *   encode TYPE SEQ BODYHEX   -> "<wire hex>" (COBS frame with its 0x00)
 *   decode WIREHEX            -> one line per FrameReader event, in order:
 *                                "frame TYPE SEQ BODYHEX" or "error BAD_FRAME|BAD_CRC|TOO_LONG"
 *   request BODYHEX           -> "ok max_new_tokens=N flags=N temperature=F top_k=N top_p=F
 *                                seed=N prompt=1,2,3 stop=2" or "error" (reason on stderr)
 *   fuzz SEED N               -> N iterations of random and mutated-valid wire data through
 *                                the FrameReader and the REQUEST parser; one summary line
 *
 * TYPE, SEQ and the numbers printed are decimal (TYPE/SEQ also accept 0x...); hex is
 * lower-case on output, either case on input; "-" or "" is an empty hex string, and an
 * empty body prints as "-". Floats print with %.9g (exact for f32).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "protocol.h"

/* ----------------------------------------------------------------------------
 * Hex */

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes hex into a new buffer (*out, *len). Returns 0, or -1 on bad hex. */
static int hex_decode(const char *hex, uint8_t **out, size_t *len) {
    if (strcmp(hex, "-") == 0) hex = "";
    size_t n = strlen(hex);
    if (n % 2 != 0) return -1;
    uint8_t *buf = (uint8_t *)malloc(n / 2 + 1); /* +1: never malloc(0) */
    if (!buf) return -1;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            free(buf);
            return -1;
        }
        buf[i] = (uint8_t)(hi << 4 | lo);
    }
    *out = buf;
    *len = n / 2;
    return 0;
}

static void hex_print(const uint8_t *p, size_t n) {
    if (n == 0) {
        fputs("-", stdout);
        return;
    }
    for (size_t i = 0; i < n; i++) printf("%02x", p[i]);
}

static int parse_u32(const char *s, uint32_t *out) {
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno != 0 || *s == '\0' || *s == '-' || *end != '\0' || v > UINT32_MAX) return -1;
    *out = (uint32_t)v;
    return 0;
}

/* ----------------------------------------------------------------------------
 * encode / decode / request */

static int cmd_encode(const char *type_s, const char *seq_s, const char *body_hex) {
    uint32_t type, seq;
    uint8_t *body;
    size_t body_len;
    if (parse_u32(type_s, &type) != 0 || type > 0xFF || parse_u32(seq_s, &seq) != 0) {
        fprintf(stderr, "encode: TYPE must be 0..255 and SEQ 0..2^32-1\n");
        return 2;
    }
    if (hex_decode(body_hex, &body, &body_len) != 0) {
        fprintf(stderr, "encode: BODYHEX is not hex\n");
        return 2;
    }
    size_t cap = frame_wire_bound(body_len);
    uint8_t *wire = (uint8_t *)malloc(cap);
    long n = wire ? frame_encode((uint8_t)type, seq, body, body_len, wire, cap) : FRAME_ERR_NO_SPACE;
    int status = 0;
    if (n < 0) {
        fprintf(stderr, "encode: %s\n", frame_result_name((int)n));
        status = 2;
    } else {
        hex_print(wire, (size_t)n);
        putchar('\n');
    }
    free(wire);
    free(body);
    return status;
}

static void print_event(int event, const Frame *f) {
    if (event == FRAME_READY) {
        printf("frame %u %" PRIu32 " ", f->type, f->seq);
        hex_print(f->body, f->body_len);
        putchar('\n');
    } else if (event < 0) {
        printf("error %s\n", frame_result_name(event));
    }
}

static int cmd_decode(const char *wire_hex) {
    uint8_t *wire;
    size_t len;
    if (hex_decode(wire_hex, &wire, &len) != 0) {
        fprintf(stderr, "decode: WIREHEX is not hex\n");
        return 2;
    }
    static FrameReader reader; /* ~16 KiB: not on the stack */
    frame_reader_init(&reader);
    size_t off = 0;
    while (off < len) {
        size_t used = 0;
        Frame f;
        int event = frame_reader_feed(&reader, wire + off, len - off, &used, &f);
        off += used;
        print_event(event, &f);
    }
    free(wire);
    return 0;
}

static void print_request(const Request *r) {
    printf("ok max_new_tokens=%" PRIu32 " flags=%" PRIu32 " temperature=%.9g top_k=%" PRIu32
           " top_p=%.9g seed=%" PRIu64 " prompt=",
           r->max_new_tokens, r->flags, (double)r->temperature, r->top_k, (double)r->top_p, r->seed);
    for (uint32_t i = 0; i < r->n_prompt; i++) printf("%s%" PRIu32, i ? "," : "", request_prompt_at(r, i));
    printf(" stop=");
    for (uint32_t i = 0; i < r->n_stop; i++) printf("%s%" PRIu32, i ? "," : "", request_stop_at(r, i));
    putchar('\n');
}

static int cmd_request(const char *body_hex) {
    uint8_t *body;
    size_t len;
    if (hex_decode(body_hex, &body, &len) != 0) {
        fprintf(stderr, "request: BODYHEX is not hex\n");
        return 2;
    }
    Request r;
    const char *why = NULL;
    if (proto_parse_request(body, len, &r, &why) == 0) {
        print_request(&r);
    } else {
        puts("error");
        fprintf(stderr, "request: %s\n", why ? why : "?");
    }
    free(body);
    return 0;
}

/* ----------------------------------------------------------------------------
 * fuzz */

static uint64_t rng_state;

static uint64_t rng_next(void) { /* xorshift64* */
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static uint32_t rng_below(uint32_t n) { return n ? (uint32_t)((rng_next() >> 32) % n) : 0; }

typedef struct {
    unsigned long frames, bad_frame, bad_crc, too_long, requests_ok, requests_error, roundtrips;
} FuzzStats;

#define FUZZ_CAP (3 * FRAME_MAX_WIRE)

static uint8_t fz_body[FRAME_MAX_BODY];
static uint8_t fz_wire[FUZZ_CAP];
static FrameReader fz_bytewise, fz_chunked;

static int fail(const char *what, unsigned long iteration) {
    fprintf(stderr, "fuzz: invariant failed at iteration %lu: %s\n", iteration, what);
    return 1;
}

/* A REQUEST body that must parse: random fields within the rules. Returns its length. */
static size_t make_valid_request(uint8_t *out, size_t cap, uint32_t n_prompt, uint32_t n_stop) {
    ByteWriter w;
    bw_init(&w, out, cap);
    bw_u32(&w, 1 + rng_below(1000));
    bw_u32(&w, (uint32_t)rng_next());
    bw_f32(&w, (float)rng_below(200) / 100.0f);
    bw_u32(&w, rng_below(100));
    bw_f32(&w, (float)rng_below(101) / 100.0f);
    bw_u64(&w, rng_next());
    bw_u32(&w, n_prompt);
    for (uint32_t i = 0; i < n_prompt; i++) bw_u32(&w, (uint32_t)rng_next());
    bw_u32(&w, n_stop);
    for (uint32_t i = 0; i < n_stop; i++) bw_u32(&w, (uint32_t)rng_next());
    return w.ok ? w.len : 0;
}

/* Mutates buf[0 .. *len) in place (cap bytes available). */
static void mutate(uint8_t *buf, size_t *len, size_t cap) {
    uint32_t kind = rng_below(6);
    size_t n = *len;
    if (n == 0) kind = 3;
    switch (kind) {
    case 0: buf[rng_below((uint32_t)n)] ^= (uint8_t)(1u << rng_below(8)); break; /* bit flip */
    case 1: buf[rng_below((uint32_t)n)] = (uint8_t)rng_next(); break;            /* byte */
    case 2: *len = rng_below((uint32_t)n); break;                                /* truncate */
    case 3:                                                                      /* insert */
        if (n < cap) {
            size_t at = rng_below((uint32_t)n + 1);
            memmove(buf + at + 1, buf + at, n - at);
            buf[at] = (uint8_t)(rng_below(4) == 0 ? 0 : rng_next());
            *len = n + 1;
        }
        break;
    case 4: { /* delete */
        size_t at = rng_below((uint32_t)n);
        memmove(buf + at, buf + at + 1, n - at - 1);
        *len = n - 1;
        break;
    }
    default: buf[rng_below((uint32_t)n)] = 0; break; /* a stray delimiter */
    }
}

/* Feeds wire through two readers (byte by byte, and in random chunks); both must report
 * the same events. Frames with a REQUEST type go through the parser. */
static int feed_both(const uint8_t *wire, size_t len, FuzzStats *st, unsigned long it) {
    int ev_a[64], ev_b[64];
    size_t na = 0, nb = 0;
    Frame fa, fb;
    for (size_t i = 0; i < len; i++) {
        int e = frame_reader_push(&fz_bytewise, wire[i], &fa);
        if (e == FRAME_NONE) continue;
        if (na < 64) ev_a[na++] = e;
        if (e == FRAME_READY) {
            st->frames++;
            if (fa.body_len > FRAME_MAX_BODY) return fail("body longer than FRAME_MAX_BODY", it);
            Request r;
            const char *why;
            if (proto_parse_request(fa.body, fa.body_len, &r, &why) == 0) {
                st->requests_ok++;
                for (uint32_t k = 0; k < r.n_prompt; k++) (void)request_prompt_at(&r, k);
                (void)request_is_stop(&r, 0);
            } else {
                st->requests_error++;
            }
        } else if (e == FRAME_ERR_BAD_FRAME) st->bad_frame++;
        else if (e == FRAME_ERR_BAD_CRC) st->bad_crc++;
        else if (e == FRAME_ERR_TOO_LONG) st->too_long++;
        else return fail("unexpected reader result", it);
    }
    size_t off = 0;
    while (off < len) {
        size_t chunk = 1 + rng_below(4096), used = 0;
        if (chunk > len - off) chunk = len - off;
        int e = frame_reader_feed(&fz_chunked, wire + off, chunk, &used, &fb);
        if (used == 0 || used > chunk) return fail("feed consumed nothing or too much", it);
        off += used;
        if (e != FRAME_NONE && nb < 64) ev_b[nb++] = e;
    }
    if (na != nb || memcmp(ev_a, ev_b, na * sizeof ev_a[0]) != 0)
        return fail("byte-wise and chunked feeding disagree", it);
    return 0;
}

static int cmd_fuzz(const char *seed_s, const char *n_s) {
    uint32_t seed, iterations;
    if (parse_u32(seed_s, &seed) != 0 || parse_u32(n_s, &iterations) != 0) {
        fprintf(stderr, "fuzz: SEED and N must be numbers\n");
        return 2;
    }
    rng_state = seed ? seed : 0x9E3779B97F4A7C15ull;
    frame_reader_init(&fz_bytewise);
    frame_reader_init(&fz_chunked);
    FuzzStats st = {0};

    for (unsigned long it = 0; it < iterations; it++) {
        size_t len = 0;
        uint32_t kind = rng_below(100);
        if (kind < 25) { /* random bytes, sometimes with delimiters */
            len = rng_below(512);
            for (size_t i = 0; i < len; i++) fz_wire[i] = (uint8_t)(rng_below(8) == 0 ? 0 : rng_next());
        } else if (kind < 97) { /* valid frames, then mutated (REQUESTs half the time) */
            size_t body_len;
            uint8_t type;
            if (rng_below(2)) {
                uint32_t np = rng_below(8), ns = rng_below(4);
                if (rng_below(50) == 0) np = rng_below(PROTO_MAX_REQUEST_IDS + 1);
                body_len = make_valid_request(fz_body, sizeof fz_body, np, ns);
                type = MSG_REQUEST;
                Request r;
                const char *why;
                int parsed = body_len ? proto_parse_request(fz_body, body_len, &r, &why) : -1;
                if ((np >= 1 && body_len && parsed != 0) || (np == 0 && parsed == 0))
                    return fail("a well-formed REQUEST body was judged wrongly", it);
            } else {
                body_len = rng_below(64) == 0 ? rng_below(FRAME_MAX_BODY + 1) : rng_below(300);
                for (size_t i = 0; i < body_len; i++)
                    fz_body[i] = (uint8_t)(rng_below(4) == 0 ? 0 : rng_next());
                type = (uint8_t)rng_next();
            }
            uint32_t seq = (uint32_t)rng_next();
            long n = frame_encode(type, seq, fz_body, body_len, fz_wire, sizeof fz_wire);
            if (n < 0) return fail("frame_encode refused a legal body", it);
            len = (size_t)n;
            /* round trip through a fresh reader */
            static FrameReader fresh;
            frame_reader_init(&fresh);
            Frame f;
            size_t used = 0;
            int e = frame_reader_feed(&fresh, fz_wire, len, &used, &f);
            if (e != FRAME_READY || used != len || f.type != type || f.seq != seq ||
                f.body_len != body_len || memcmp(f.body, fz_body, body_len) != 0)
                return fail("encode -> decode round trip differs", it);
            st.roundtrips++;
            uint32_t mutations = rng_below(4);
            for (uint32_t m = 0; m < mutations; m++) mutate(fz_wire, &len, sizeof fz_wire);
        } else { /* oversized: a run of non-zero bytes past the limit */
            len = FRAME_MAX_ENCODED + 1 + rng_below(2 * FRAME_MAX_PAYLOAD);
            if (len > sizeof fz_wire - 1) len = sizeof fz_wire - 1;
            for (size_t i = 0; i < len; i++) fz_wire[i] = (uint8_t)(1 + rng_below(255));
            fz_wire[len++] = 0;
        }
        if (feed_both(fz_wire, len, &st, it) != 0) return 1;

        /* the REQUEST parser on raw bytes too */
        size_t blen = rng_below(128);
        for (size_t i = 0; i < blen; i++) fz_body[i] = (uint8_t)(rng_below(3) == 0 ? 0 : rng_next());
        Request r;
        const char *why;
        if (proto_parse_request(fz_body, blen, &r, &why) == 0) st.requests_ok++;
        else st.requests_error++;
    }
    printf("fuzz seed=%" PRIu32 " iterations=%" PRIu32 " roundtrips=%lu frames=%lu bad_frame=%lu "
           "bad_crc=%lu too_long=%lu requests_ok=%lu requests_error=%lu ok\n",
           seed, iterations, st.roundtrips, st.frames, st.bad_frame, st.bad_crc, st.too_long,
           st.requests_ok, st.requests_error);
    return 0;
}

/* ----------------------------------------------------------------------------
 * main */

static int usage(void) {
    fprintf(stderr, "usage: frame_harness encode TYPE SEQ BODYHEX | decode WIREHEX | "
                    "request BODYHEX | fuzz SEED N\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[1], "encode") == 0) return cmd_encode(argv[2], argv[3], argv[4]);
    if (argc == 3 && strcmp(argv[1], "decode") == 0) return cmd_decode(argv[2]);
    if (argc == 3 && strcmp(argv[1], "request") == 0) return cmd_request(argv[2]);
    if (argc == 4 && strcmp(argv[1], "fuzz") == 0) return cmd_fuzz(argv[2], argv[3]);
    return usage();
}
