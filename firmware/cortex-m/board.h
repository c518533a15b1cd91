/* board.h - what startup.c gives the firmware on a bare-metal Cortex-M board: a clock, the serial
 * link's UART and the embedded program (.pte), placed by memory.ld. */
#ifndef EDGELM_BOARD_H
#define EDGELM_BOARD_H

#include <stddef.h>
#include <stdint.h>

#include "uart_cmsdk.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Microseconds since reset, from SysTick at CPU_HZ (1 ms interrupts plus the current count). */
uint64_t board_now_us(void);

/* The UART at UART_BASE (board_config.h). */
CmsdkUart *board_uart(void);

/* The program's bytes, as placed by memory.ld in the program memory (program.S). */
const uint8_t *board_program(size_t *len);

/* Stops here for good (a fault, or a self-test that failed after reporting it). */
void board_halt(void) __attribute__((noreturn));

#ifdef __cplusplus
}
#endif

#endif /* EDGELM_BOARD_H */
