/* selftest.c - self-test firmware for a bare-metal board (runs on qemu-system-arm mps3-an547).
 *
 * At reset it checks the firmware's own C on this CPU: framing (CRC-32, COBS and frame round
 * trips, a corrupted frame refused), protocol (a REQUEST built and parsed, a truncated one
 * refused, HELLO packed) and sampler (greedy and top-k on fixed logits, the generator), and
 * SHA-256. Then it serves the real protocol (cm_server.c) on the UART, exactly as the runner does,
 * with a built-in toy "model" in place of ExecuTorch: NOT a language model, a fixed function of the
 * last token and its position (see toy_forward), so the host can predict every greedy token.
 * HELLO carries the SHA-256 of the program embedded by memory.ld, hashed here, on the board.
 * A failed check is reported as an ERROR frame (RUNTIME, "self-test failed: <check>") instead of
 * HELLO, and the firmware stops. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "board.h"
#include "board_config.h"
#include "cm_server.h"
#include "frame.h"
#include "protocol.h"
#include "sampler.h"
#include "sha256.h"

/* ----------------------------------------------------------------------------
 * The toy model (self-test only; its Python twin is in tests/integration/test_cortexm_qemu.py) */

#define TOY_VOCAB 64u
#define TOY_MAX_SEQ_LEN 96u
#define TOY_NEXT_LOGIT 8.0f

/* The token the toy model favours after `token` at `pos`. */
static uint32_t toy_next(uint32_t token, uint32_t pos) { return (token * 5u + pos + 1u) % TOY_VOCAB; }

static float g_toy_logits[TOY_VOCAB];

/* logits[v] = ((3 v) mod 11) / 4, except the favoured token's, TOY_NEXT_LOGIT. */
static int toy_forward(void *model, uint32_t token, uint32_t pos, const float **logits, char *why, size_t why_cap) {
    (void)model;
    if (token >= TOY_VOCAB || pos >= TOY_MAX_SEQ_LEN) {
        snprintf(why, why_cap, "toy model: token %lu at %lu out of range", (unsigned long)token, (unsigned long)pos);
        return -1;
    }
    for (uint32_t v = 0; v < TOY_VOCAB; v++) g_toy_logits[v] = (float)((v * 3u) % 11u) * 0.25f;
    g_toy_logits[toy_next(token, pos)] = TOY_NEXT_LOGIT;
    *logits = g_toy_logits;
    return 0;
}

/* ----------------------------------------------------------------------------
 * Checks */

static int g_checks;             /* checks passed */
static const char *g_failed;     /* the first check that failed, or NULL */

#define CHECK(name, cond)                         \
    do {                                          \
        if (cond) g_checks++;                     \
        else if (!g_failed) g_failed = (name);    \
    } while (0)

static uint8_t g_wire[FRAME_MAX_WIRE];
static uint8_t g_buf[FRAME_MAX_WIRE];
static FrameReader g_reader;

/* Feeds n wire bytes to a fresh reader; the last event (READY fills *f). */
static int feed_all(const uint8_t *p, size_t n, Frame *f) {
    frame_reader_init(&g_reader);
    int last = FRAME_NONE;
    for (size_t i = 0; i < n; i++) {
        int e = frame_reader_push(&g_reader, p[i], f);
        if (e != FRAME_NONE) last = e;
    }
    return last;
}

static void check_framing(void) {
    CHECK("crc32 of 123456789", crc32_update(0, (const uint8_t *)"123456789", 9) == 0xCBF43926u);
    uint8_t data[300];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (uint8_t)(i % 7 == 0 ? 0 : i);
    long enc = cobs_encode(data, sizeof data, g_buf, sizeof g_buf);
    int zero_free = enc > 0;
    for (long i = 0; i < enc; i++) zero_free = zero_free && g_buf[i] != 0;
    CHECK("cobs encode has no zero", zero_free);
    long dec = enc > 0 ? cobs_decode(g_buf, (size_t)enc, g_buf, sizeof g_buf) : -1;
    CHECK("cobs round trip", dec == (long)sizeof data && memcmp(g_buf, data, sizeof data) == 0);
    uint8_t run[254];
    memset(run, 0x5A, sizeof run);
    enc = cobs_encode(run, sizeof run, g_buf, sizeof g_buf);
    CHECK("cobs full block", enc == 256 && g_buf[0] == 0xFF && g_buf[255] == 0x01);

    static const uint8_t body[] = {0x00, 0x01, 0x00, 0xFF, 'e', 'd', 'g', 'e'};
    long n = frame_encode(MSG_TOKEN, 0x01020304u, body, sizeof body, g_wire, sizeof g_wire);
    Frame f;
    int e = n > 0 ? feed_all(g_wire, (size_t)n, &f) : FRAME_ERR_ARG;
    CHECK("frame round trip", e == FRAME_READY && f.type == MSG_TOKEN && f.seq == 0x01020304u &&
                                  f.body_len == sizeof body && memcmp(f.body, body, sizeof body) == 0);
    if (n > 3) {
        g_wire[2] ^= 0x10u; /* a flipped bit inside the frame, not the delimiter */
        if (g_wire[2] == 0) g_wire[2] = 0x10u;
        CHECK("corrupted frame refused", feed_all(g_wire, (size_t)n, &f) == FRAME_ERR_BAD_CRC);
    }
    static const uint8_t junk[] = {0x03, 0x41, 0x42, 0x00};
    CHECK("short frame refused", feed_all(junk, sizeof junk, &f) == FRAME_ERR_BAD_FRAME);
    CHECK("oversize body refused",
          frame_encode(MSG_TOKEN, 0, g_buf, FRAME_MAX_BODY + 1, g_wire, sizeof g_wire) == FRAME_ERR_TOO_LONG);
}

static void check_protocol(void) {
    ByteWriter w;
    bw_init(&w, g_buf, sizeof g_buf);
    bw_u32(&w, 5);          /* max_new_tokens */
    bw_u32(&w, REQ_FLAG_REPORT_LOGITS);
    bw_f32(&w, 0.5f);       /* temperature */
    bw_u32(&w, 3);          /* top_k */
    bw_f32(&w, 0.9f);       /* top_p */
    bw_u64(&w, 42);         /* seed */
    bw_u32(&w, 2);          /* n_prompt */
    bw_u32(&w, 7);
    bw_u32(&w, 9);
    bw_u32(&w, 1);          /* n_stop */
    bw_u32(&w, 63);
    CHECK("request built", w.ok && w.len == PROTO_REQUEST_FIXED_LEN + 12);
    Request r;
    const char *why = NULL;
    int ok = proto_parse_request(g_buf, w.len, &r, &why) == 0;
    CHECK("request parsed", ok && r.max_new_tokens == 5 && r.top_k == 3 && r.seed == 42 && r.n_prompt == 2 &&
                                request_prompt_at(&r, 1) == 9 && request_is_stop(&r, 63) &&
                                !request_is_stop(&r, 7) && r.temperature == 0.5f);
    CHECK("truncated request refused", proto_parse_request(g_buf, w.len - 1, &r, &why) != 0);
    Hello h;
    memset(&h, 0, sizeof h);
    h.proto = PROTO_VERSION;
    h.firmware = "fw";
    h.board = "b";
    long n = proto_pack_hello(g_buf, sizeof g_buf, &h);
    CHECK("hello packed", n == 2 + (2 + 2) + (2 + 1) + 32 + 16);
    CHECK("small buffer refused", proto_pack_hello(g_buf, 10, &h) == -1);
    CHECK("error code of bad crc", proto_error_for_frame(FRAME_ERR_BAD_CRC) == ERR_BAD_CRC);
}

static void check_sampler(void) {
    static const float logits[8] = {0.5f, 2.0f, -1.0f, 2.0f, 1.5f, 0.0f, 1.9f, -3.0f};
    CHECK("argmax, lower id wins a tie", sample_argmax(logits, 8) == 1);
    Sampler s;
    if (build_sampler(&s, 8) != 0) {
        CHECK("sampler built", 0);
        return;
    }
    sampler_seed(&s, 1);
    CHECK("greedy at temperature 0", sample(&s, logits, 0.0f, 0, 1.0f) == 1);
    int in_top = 1;
    for (int i = 0; i < 32; i++) {
        uint32_t t = sample(&s, logits, 1.0f, 3, 1.0f);
        in_top = in_top && (t == 1 || t == 3 || t == 6);
    }
    CHECK("top-k 3 stays in the top 3", in_top && s.last.kept == 3);
    CHECK("top-k 1 is greedy", sample(&s, logits, 0.7f, 1, 1.0f) == 1);
    sampler_seed(&s, 0);
    CHECK("seed 0 is the default", s.rng_state == SAMPLER_DEFAULT_SEED);
    sampler_seed(&s, 1);
    CHECK("xorshift64* first output", sampler_next_u32(&s) == 0x47E4CE4Bu);
    free_sampler(&s);
}

static void check_sha256(void) {
    static const uint8_t abc_digest[SHA256_DIGEST_LEN] = {
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
        0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    Sha256 h;
    uint8_t d[SHA256_DIGEST_LEN];
    sha256_init(&h);
    sha256_update(&h, "abc", 3);
    sha256_final(&h, d);
    CHECK("sha256 of abc", memcmp(d, abc_digest, sizeof d) == 0);
}

/* ----------------------------------------------------------------------------
 * Link on the UART */

static int uart_in(void *io) { return uart_read_byte((CmsdkUart *)io); }
static void uart_out(void *io, const uint8_t *p, size_t n) { uart_write((CmsdkUart *)io, p, n); }
static uint64_t clock_us(void *io) {
    (void)io;
    return board_now_us();
}

static CmServer g_server;

int main(void) {
    CmsdkUart *uart = board_uart();
    if (uart_init(uart, UART_PCLK_HZ, UART_BAUD) != 0) board_halt();
    uint64_t t0 = board_now_us();

    check_framing();
    check_protocol();
    check_sampler();
    check_sha256();

    CmModel model;
    memset(&model, 0, sizeof model);
    model.forward = toy_forward;
    model.vocab_size = TOY_VOCAB;
    model.max_seq_len = TOY_MAX_SEQ_LEN;
    size_t program_len = 0;
    const uint8_t *program = board_program(&program_len);
    Sha256 h;
    sha256_init(&h);
    sha256_update(&h, program, program_len);
    sha256_final(&h, model.sha256);
    model.load_ms = (float)(board_now_us() - t0) / 1000.0f;

    static char firmware[96];
    snprintf(firmware, sizeof firmware, "edgelm-cm-selftest %s (%d checks passed)", EDGELM_FIRMWARE_VERSION,
             g_checks);
    CmLink link = {uart_in, uart_out, clock_us, uart};
    const char *why = NULL;
    if (build_cm_server(&g_server, &link, &model, firmware, EDGELM_BOARD, &why) != 0) {
        g_failed = why;
    }
    if (g_failed) {
        static char msg[PROTO_MAX_ERROR_MESSAGE];
        static uint8_t body[PROTO_MAX_ERROR_MESSAGE + 8];
        snprintf(msg, sizeof msg, "self-test failed: %s", g_failed);
        long n = proto_pack_error(body, sizeof body, ERR_RUNTIME, msg);
        long w = n > 0 ? frame_encode(MSG_ERROR, 0, body, (size_t)n, g_wire, sizeof g_wire) : -1;
        if (w > 0) uart_write(uart, g_wire, (size_t)w);
        board_halt();
    }
    cm_start(&g_server);
    for (;;) (void)cm_serve_one(&g_server);
}
