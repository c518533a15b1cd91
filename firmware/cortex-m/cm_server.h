/* cm_server.h - the serial protocol (docs/protocol.md) served on a bare-metal board: HELLO, then
 * REQUESTs answered with TOKEN... STATS, ERROR for what cannot be served, CANCEL between tokens.
 *
 * The same frame.c / protocol.c / sampler.c as the Linux runner. The model and the byte link are
 * injected, so the self-test firmware (a toy model) and the ExecuTorch runner (runner_cm.cpp) serve
 * through the same code. The model is fed one token per call (the Arm program's tokens_per_call 1):
 * a prompt of n tokens is n calls. QUIT has nowhere to exit to: the server starts over as if the
 * board had been reset (tx seq 0, a new HELLO), so the next host session finds it ready. */
#ifndef EDGELM_CM_SERVER_H
#define EDGELM_CM_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "frame.h"
#include "protocol.h"
#include "sampler.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CM_WHY_LEN 160 /* bytes of a model's failure reason */

/* One forward call: feeds `token` at position `pos` (0 starts a new sequence) and points *logits
 * at vocab_size floats, valid until the next call. Returns 0, or -1 with a reason in why. */
typedef int (*CmForwardFn)(void *model, uint32_t token, uint32_t pos, const float **logits, char *why,
                           size_t why_cap);

typedef struct {
    CmForwardFn forward;
    void *model;
    uint32_t vocab_size;  /* tokens, >= 1 */
    uint32_t max_seq_len; /* tokens, >= 2 */
    uint8_t sha256[PROTO_SHA256_LEN]; /* the program's hash, for HELLO */
    float load_ms;        /* milliseconds the program took to load */
} CmModel;

/* The byte link. read_byte never blocks: the next byte, or -1 when none has arrived. */
typedef struct {
    int (*read_byte)(void *io);
    void (*write)(void *io, const uint8_t *p, size_t n);
    uint64_t (*now_us)(void *io);
    void *io;
} CmLink;

typedef struct {
    CmLink link;
    CmModel model;
    const char *firmware; /* HELLO.firmware */
    const char *board;    /* HELLO.board */
    Sampler sampler;
    uint32_t *ctx;        /* [max_seq_len]: the prompt, then the generated tokens */
    FrameReader reader;
    uint32_t tx_seq;
    int rx_started;       /* a frame has been accepted since the last (re)start */
    uint32_t rx_seq;      /* next expected host seq */
    uint8_t last_type;    /* the last accepted frame, to drop an exact repeat */
    size_t last_len;
    uint32_t last_crc;
    int quit;             /* QUIT arrived during a generation */
    uint8_t body[FRAME_MAX_BODY];
    uint8_t wire[FRAME_MAX_WIRE];
} CmServer;

/* Sets up s (the sampler's scratch is allocated: vocab_size ids). Returns 0, or -1 with a reason
 * in *why (a static string). free_cm_server is safe after a failed build_cm_server. */
int build_cm_server(CmServer *s, const CmLink *link, const CmModel *model, const char *firmware,
                    const char *board, const char **why);
void free_cm_server(CmServer *s);

/* (Re)starts the session: tx seq 0, a fresh frame reader, then HELLO. */
void cm_start(CmServer *s);

/* Sends an ERROR frame (message truncated to PROTO_MAX_ERROR_MESSAGE). */
void cm_send_error(CmServer *s, uint16_t code, const char *message);

/* Waits for the next frame reader event and handles it. Returns 1 when a QUIT restarted the
 * session, else 0. */
int cm_serve_one(CmServer *s);

#ifdef __cplusplus
}
#endif

#endif /* EDGELM_CM_SERVER_H */
