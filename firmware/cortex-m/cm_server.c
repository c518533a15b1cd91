/* cm_server.c - the serial protocol on a bare-metal board (see cm_server.h). */
#include "cm_server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ----------------------------------------------------------------------------
 * Lifetime */

int build_cm_server(CmServer *s, const CmLink *link, const CmModel *model, const char *firmware,
                    const char *board, const char **why) {
    memset(s, 0, sizeof *s);
    if (!link->read_byte || !link->write || !link->now_us || !model->forward) {
        *why = "link or model callback missing";
        return -1;
    }
    if (model->vocab_size == 0 || model->max_seq_len < 2) {
        *why = "model needs vocab_size >= 1 and max_seq_len >= 2";
        return -1;
    }
    s->link = *link;
    s->model = *model;
    s->firmware = firmware;
    s->board = board;
    if (build_sampler(&s->sampler, model->vocab_size) != 0) {
        *why = "out of memory for the sampler";
        return -1;
    }
    s->ctx = (uint32_t *)calloc(model->max_seq_len, sizeof(uint32_t));
    if (!s->ctx) {
        free_sampler(&s->sampler);
        *why = "out of memory for the context";
        return -1;
    }
    return 0;
}

void free_cm_server(CmServer *s) {
    free_sampler(&s->sampler);
    free(s->ctx);
    s->ctx = NULL;
}

/* ----------------------------------------------------------------------------
 * Sending */

/* Frames and writes one message whose body the caller packed into s->body (body_len < 0: it did
 * not fit, a bug; an ERROR says so instead). */
static void send_body(CmServer *s, uint8_t type, long body_len) {
    if (body_len < 0) {
        type = MSG_ERROR;
        body_len = proto_pack_error(s->body, sizeof s->body, ERR_RUNTIME, "internal error: message does not fit");
    }
    long n = frame_encode(type, s->tx_seq, s->body, (size_t)body_len, s->wire, sizeof s->wire);
    if (n <= 0) return; /* cannot happen: the body is at most FRAME_MAX_BODY and wire is FRAME_MAX_WIRE */
    s->link.write(s->link.io, s->wire, (size_t)n);
    s->tx_seq++;
}

void cm_send_error(CmServer *s, uint16_t code, const char *message) {
    send_body(s, MSG_ERROR, proto_pack_error(s->body, sizeof s->body, code, message));
}

static void send_hello(CmServer *s) {
    Hello h;
    memset(&h, 0, sizeof h);
    h.proto = PROTO_VERSION;
    h.firmware = s->firmware;
    h.board = s->board;
    memcpy(h.model_sha256, s->model.sha256, sizeof h.model_sha256);
    h.max_seq_len = s->model.max_seq_len;
    h.vocab_size = s->model.vocab_size;
    h.threads = 1;
    h.load_ms = s->model.load_ms;
    send_body(s, MSG_HELLO, proto_pack_hello(s->body, sizeof s->body, &h));
}

/* TOKEN `index`; with logits (REQ_FLAG_REPORT_LOGITS) also the token's logit and the TOKEN_MAX_TOP
 * best (id, logit), best first, the lower id first on a tie (as the Linux runner). */
static void send_token(CmServer *s, uint32_t index, uint32_t token, uint64_t t_us, const float *logits) {
    TokenMsg t;
    memset(&t, 0, sizeof t);
    t.index = index;
    t.token = token;
    t.t_us = t_us;
    if (logits) proto_fill_logits(&t, logits, s->model.vocab_size, token);
    send_body(s, MSG_TOKEN, proto_pack_token(s->body, sizeof s->body, &t));
}

static void send_framing_error(CmServer *s, int event) {
    uint16_t code = proto_error_for_frame(event);
    cm_send_error(s, code, code == ERR_BAD_CRC    ? "frame CRC mismatch"
                           : code == ERR_TOO_LONG ? "frame over 16384 payload bytes, discarded up to the next 0x00"
                                                  : "frame is not valid COBS or is shorter than 9 bytes");
}

void cm_start(CmServer *s) {
    s->tx_seq = 0;
    s->rx_started = 0;
    s->quit = 0;
    frame_reader_init(&s->reader);
    send_hello(s);
}

/* ----------------------------------------------------------------------------
 * Receiving */

/* The next frame reader event from what has arrived, or FRAME_NONE when nothing more has. */
static int next_event(CmServer *s, Frame *f) {
    for (;;) {
        int byte = s->link.read_byte(s->link.io);
        if (byte < 0) return FRAME_NONE;
        int event = frame_reader_push(&s->reader, (uint8_t)byte, f);
        if (event != FRAME_NONE) return event;
    }
}

/* Sequence bookkeeping. Returns 0 for an exact repeat of the last frame (dropped: a link that
 * repeats bytes must not serve a request twice), else 1. */
static int accept_frame(CmServer *s, const Frame *f) {
    uint32_t crc = crc32_update(0, f->body, f->body_len);
    if (s->rx_started && f->seq + 1 == s->rx_seq && f->type == s->last_type && f->body_len == s->last_len &&
        crc == s->last_crc)
        return 0;
    s->rx_started = 1;
    s->rx_seq = f->seq + 1;
    s->last_type = f->type;
    s->last_len = f->body_len;
    s->last_crc = crc;
    return 1;
}

/* Between tokens: 1 when the host asked to stop (CANCEL, or QUIT, which also ends the session).
 * Anything else is refused with an ERROR: the host waits for STATS before its next request. */
static int stop_asked(CmServer *s) {
    Frame f;
    for (int event; (event = next_event(s, &f)) != FRAME_NONE;) {
        if (event < 0) {
            send_framing_error(s, event);
            continue;
        }
        if (!accept_frame(s, &f)) continue;
        if (f.type == MSG_CANCEL || f.type == MSG_QUIT) {
            s->quit = s->quit || f.type == MSG_QUIT;
            return 1;
        }
        cm_send_error(s, ERR_BAD_REQUEST, "only CANCEL or QUIT until STATS");
    }
    return 0;
}

/* ----------------------------------------------------------------------------
 * Generation */

static void serve_request(CmServer *s, const Request *req, uint64_t t_request) {
    char msg[PROTO_MAX_ERROR_MESSAGE];
    char why[CM_WHY_LEN];
    const CmModel *m = &s->model;
    if ((uint64_t)req->n_prompt + req->max_new_tokens > m->max_seq_len) {
        snprintf(msg, sizeof msg, "prompt %lu + max_new_tokens %lu exceeds max_seq_len %lu",
                 (unsigned long)req->n_prompt, (unsigned long)req->max_new_tokens, (unsigned long)m->max_seq_len);
        cm_send_error(s, ERR_SEQ_TOO_LONG, msg);
        return;
    }
    for (uint32_t i = 0; i < req->n_prompt; i++) {
        uint32_t t = request_prompt_at(req, i);
        if (t >= m->vocab_size) {
            snprintf(msg, sizeof msg, "prompt[%lu] = %lu is not below vocab_size %lu", (unsigned long)i,
                     (unsigned long)t, (unsigned long)m->vocab_size);
            cm_send_error(s, ERR_BAD_REQUEST, msg);
            return;
        }
        s->ctx[i] = t;
    }
    const float *logits = NULL;
    for (uint32_t i = 0; i < req->n_prompt; i++) { /* the prefill: one token per call */
        if (m->forward(m->model, s->ctx[i], i, &logits, why, sizeof why) != 0) {
            snprintf(msg, sizeof msg, "prefill at input_pos %lu: %s", (unsigned long)i, why);
            cm_send_error(s, ERR_RUNTIME, msg);
            return;
        }
    }
    const int use_stop = (req->flags & REQ_FLAG_IGNORE_STOP) == 0;
    const int report = (req->flags & REQ_FLAG_REPORT_LOGITS) != 0;
    sampler_seed(&s->sampler, req->seed);
    uint32_t tok = sample(&s->sampler, logits, req->temperature, req->top_k, req->top_p);
    uint64_t t_first = s->link.now_us(s->link.io);
    send_token(s, 0, tok, t_first - t_request, report ? logits : NULL);
    uint32_t generated = 1, calls = 0;
    uint32_t pos = req->n_prompt; /* where tok goes */
    uint64_t t_last = t_first;
    uint8_t stop = STOP_MAX_TOKENS;
    for (;;) {
        if (use_stop && request_is_stop(req, tok)) {
            stop = STOP_TOKEN;
            break;
        }
        if (generated >= req->max_new_tokens) break;
        if (stop_asked(s)) {
            stop = STOP_CANCELLED;
            break;
        }
        s->ctx[pos] = tok;
        if (m->forward(m->model, tok, pos, &logits, why, sizeof why) != 0) {
            snprintf(msg, sizeof msg, "decode step %lu at input_pos %lu: %s", (unsigned long)generated,
                     (unsigned long)pos, why);
            cm_send_error(s, ERR_RUNTIME, msg);
            return;
        }
        calls++;
        pos++;
        tok = sample(&s->sampler, logits, req->temperature, req->top_k, req->top_p);
        t_last = s->link.now_us(s->link.io);
        send_token(s, generated, tok, t_last - t_request, report ? logits : NULL);
        generated++;
    }
    Stats st;
    memset(&st, 0, sizeof st);
    st.prompt_tokens = req->n_prompt;
    st.generated = generated;
    st.stop = stop;
    st.load_ms = m->load_ms;
    proto_fill_rates(&st, req->n_prompt, generated, t_request, t_first, t_last);
    st.peak_rss_kb = 0; /* no process: the arena is fixed at link time */
    st.decode_calls = calls;
    send_body(s, MSG_STATS, proto_pack_stats(s->body, sizeof s->body, &st));
}

int cm_serve_one(CmServer *s) {
    Frame f;
    int event;
    while ((event = next_event(s, &f)) == FRAME_NONE) {
    }
    if (event < 0) {
        send_framing_error(s, event);
        return 0;
    }
    uint64_t t_request = s->link.now_us(s->link.io);
    if (!accept_frame(s, &f)) return 0;
    if (f.type == MSG_QUIT) {
        if (f.body_len != 0) {
            cm_send_error(s, ERR_BAD_REQUEST, "QUIT carries a body, expected none");
            return 0;
        }
        cm_start(s);
        return 1;
    }
    if (f.type == MSG_CANCEL) return 0; /* late: the generation it was for has ended */
    if (f.type != MSG_REQUEST) {
        char msg[64];
        snprintf(msg, sizeof msg, "unknown message type 0x%02x", (unsigned)f.type);
        cm_send_error(s, ERR_BAD_REQUEST, msg);
        return 0;
    }
    Request req;
    const char *why = NULL;
    if (proto_parse_request(f.body, f.body_len, &req, &why) != 0) {
        char msg[PROTO_MAX_ERROR_MESSAGE];
        snprintf(msg, sizeof msg, "REQUEST body (%lu bytes) does not parse: %s", (unsigned long)f.body_len, why);
        cm_send_error(s, ERR_BAD_REQUEST, msg);
        return 0;
    }
    serve_request(s, &req, t_request);
    if (s->quit) {
        cm_start(s);
        return 1;
    }
    return 0;
}
