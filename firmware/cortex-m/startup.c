/* startup.c - reset and the minimum a bare-metal Cortex-M (M55, M85) needs before main(): the
 * vector table, .data copied from its load address, .bss zeroed, the FPU on, C++ constructors run,
 * SysTick as the clock, and a heap bounded by memory.ld (newlib's malloc calls _sbrk). */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "board.h"
#include "board_config.h"

/* ----------------------------------------------------------------------------
 * Symbols from memory.ld */

extern uint32_t __stack_top;
extern uint8_t __data_load, __data_start, __data_end;
extern uint8_t __bss_start, __bss_end;
extern uint8_t __heap_start, __heap_end;
extern uint8_t edgelm_program_start, edgelm_program_end; /* program.S */
typedef void (*InitFn)(void);
extern InitFn __init_array_start[], __init_array_end[];

int main(void);
void Reset_Handler(void) __attribute__((noreturn));
void Default_Handler(void);
void SysTick_Handler(void);
void *_sbrk(ptrdiff_t incr);

/* ----------------------------------------------------------------------------
 * System control registers (ARMv8-M ARM, B3 and B11) */

#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)
#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SYST_CSR_ENABLE_TICKINT_CPUCLK 0x7u
#define CPACR_CP10_CP11_FULL (0xFu << 20)
#define TICK_HZ 1000u

/* ----------------------------------------------------------------------------
 * Vector table: the initial stack pointer, then the exceptions (ARMv8-M numbering) */

__attribute__((section(".vectors"), used)) void (*const edgelm_vectors[16])(void) = {
    (void (*)(void))&__stack_top,
    Reset_Handler,
    Default_Handler, /* NMI */
    Default_Handler, /* HardFault */
    Default_Handler, /* MemManage */
    Default_Handler, /* BusFault */
    Default_Handler, /* UsageFault */
    Default_Handler, /* SecureFault */
    0, 0, 0,
    Default_Handler, /* SVCall */
    Default_Handler, /* DebugMonitor */
    0,
    Default_Handler, /* PendSV */
    SysTick_Handler,
};

void Reset_Handler(void) {
    SCB_CPACR |= CPACR_CP10_CP11_FULL; /* -mfloat-abi=hard: the FPU (and MVE) before any float */
    __asm volatile("dsb\n\tisb" ::: "memory");
    memcpy(&__data_start, &__data_load, (size_t)(&__data_end - &__data_start));
    memset(&__bss_start, 0, (size_t)(&__bss_end - &__bss_start));
    SYST_RVR = CPU_HZ / TICK_HZ - 1u;
    SYST_CVR = 0;
    SYST_CSR = SYST_CSR_ENABLE_TICKINT_CPUCLK;
    for (InitFn *f = __init_array_start; f < __init_array_end; f++) (*f)();
    (void)main();
    board_halt();
}

void Default_Handler(void) { board_halt(); }

void board_halt(void) {
    for (;;) __asm volatile("wfi");
}

/* ----------------------------------------------------------------------------
 * Clock */

static volatile uint64_t g_ticks; /* SysTick interrupts since reset (milliseconds) */

void SysTick_Handler(void) { g_ticks++; }

uint64_t board_now_us(void) {
    uint64_t ticks;
    uint32_t count;
    do { /* a tick between the two reads: read again */
        ticks = g_ticks;
        count = SYST_CVR;
    } while (ticks != g_ticks);
    uint32_t per_us = CPU_HZ / 1000000u;
    uint32_t elapsed = SYST_RVR - count; /* counts down */
    return ticks * 1000u + (per_us ? elapsed / per_us : 0u);
}

/* ----------------------------------------------------------------------------
 * UART, program, heap */

CmsdkUart *board_uart(void) { return (CmsdkUart *)UART_BASE; }

const uint8_t *board_program(size_t *len) {
    *len = (size_t)(&edgelm_program_end - &edgelm_program_start);
    return &edgelm_program_start;
}

void *_sbrk(ptrdiff_t incr) {
    static uint8_t *brk = &__heap_start;
    if (incr < 0 ? (size_t)-incr > (size_t)(brk - &__heap_start)
                 : (size_t)incr > (size_t)(&__heap_end - brk)) {
        errno = ENOMEM;
        return (void *)-1;
    }
    uint8_t *old = brk;
    brk += incr;
    return old;
}
