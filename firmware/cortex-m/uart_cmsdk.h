/* uart_cmsdk.h - polled driver for Arm's CMSDK APB UART (the UARTs of the MPS2/MPS3 boards and the
 * Corstone FVPs). The base address and clocks come from board_config.h. No interrupts, no FIFO: the
 * UART holds one received byte, and a sender that outpaces us is held back by the link (QEMU), or
 * loses bytes (hardware), which the framing's CRC then reports. */
#ifndef EDGELM_UART_CMSDK_H
#define EDGELM_UART_CMSDK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Register block at a base address (CMSDK APB UART TRM, "APB UART"). */
typedef struct {
    volatile uint32_t data;      /* 0x00: received byte (read), byte to send (write) */
    volatile uint32_t state;     /* 0x04: bit 0 TX full, bit 1 RX full; write 1 to clear overruns */
    volatile uint32_t ctrl;      /* 0x08: bit 0 TX enable, bit 1 RX enable */
    volatile uint32_t intstatus; /* 0x0c: read status, write 1 to clear */
    volatile uint32_t bauddiv;   /* 0x10: pclk / baud, at least 16 */
} CmsdkUart;

#define UART_STATE_TX_FULL 0x1u
#define UART_STATE_RX_FULL 0x2u
#define UART_STATE_OVERRUNS 0xCu /* bits 2 (TX) and 3 (RX) */
#define UART_CTRL_TX_EN 0x1u
#define UART_CTRL_RX_EN 0x2u
#define UART_MIN_BAUDDIV 16u

/* Sets the divider and enables both directions. Returns 0, or -1 when pclk_hz / baud is below
 * UART_MIN_BAUDDIV (the UART cannot run that fast). */
int uart_init(CmsdkUart *u, uint32_t pclk_hz, uint32_t baud);

/* The next received byte (0..255), or -1 when none is waiting. Never blocks. */
int uart_read_byte(CmsdkUart *u);

/* Sends n bytes, waiting while the transmitter is full. */
void uart_write(CmsdkUart *u, const uint8_t *p, size_t n);

#ifdef __cplusplus
}
#endif

#endif /* EDGELM_UART_CMSDK_H */
