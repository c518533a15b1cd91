/* uart_cmsdk.c - polled CMSDK APB UART driver (see uart_cmsdk.h). */
#include "uart_cmsdk.h"

int uart_init(CmsdkUart *u, uint32_t pclk_hz, uint32_t baud) {
    if (baud == 0 || pclk_hz / baud < UART_MIN_BAUDDIV) return -1;
    u->ctrl = 0;
    u->bauddiv = pclk_hz / baud;
    u->state = UART_STATE_OVERRUNS; /* clear stale overrun flags */
    u->ctrl = UART_CTRL_TX_EN | UART_CTRL_RX_EN;
    return 0;
}

int uart_read_byte(CmsdkUart *u) {
    uint32_t state = u->state;
    if (state & UART_STATE_OVERRUNS) u->state = state & UART_STATE_OVERRUNS; /* the CRC reports the loss */
    if (!(state & UART_STATE_RX_FULL)) return -1;
    return (int)(u->data & 0xFFu);
}

void uart_write(CmsdkUart *u, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        while (u->state & UART_STATE_TX_FULL) {
        }
        u->data = p[i];
    }
}
