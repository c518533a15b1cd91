/* program.S - the program (.pte) the firmware runs, embedded as bytes in the section memory.ld
 * places in the board's program memory (flash or DRAM). model.pte sits next to this file. */
    .section .edgelm_program, "a"
    .balign 16
    .global edgelm_program_start
    .global edgelm_program_end
edgelm_program_start:
    .incbin "model.pte"
edgelm_program_end:
    .balign 16
