/* serial.h - the board's end of the link: a tty (UART, USB gadget or pseudo-terminal)
 * in raw mode, 8N1, no flow control, blocking reads. */
#ifndef EDGELM_SERIAL_H
#define EDGELM_SERIAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 1 if baud (bits per second) is a rate termios can set, else 0. */
int serial_baud_supported(long baud);

/* Opens path read-write (O_NOCTTY), takes it exclusively (TIOCEXCL where the device
 * supports it), sets raw mode at baud and drops stale input. Returns the fd, or -1 with
 * "cannot open serial device PATH: reason" in err. */
int serial_open(const char *path, long baud, char *err, size_t err_cap);

/* Blocks until at least one byte arrives; retries EINTR. Also reads stdin for `--serial -` (a
 * pipe or an SSH channel). Returns the byte count, 0 at end of file, or -1 with errno set
 * (EIO: the other end of a pseudo-terminal closed). */
ssize_t serial_read(int fd, uint8_t *buf, size_t cap);

/* Writes all n bytes (to the tty, or stdout for `--serial -`); retries EINTR and short writes.
 * Returns 0, or -1 with errno set (EPIPE: nobody reads the pipe any more). */
int serial_write_all(int fd, const uint8_t *buf, size_t n);

/* Ends the exclusive hold serial_open took (TIOCNXCL). Async-signal-safe: a handler for
 * SIGTERM may call it before the process dies. */
void serial_release(int fd);

/* serial_release, then close. */
void serial_close(int fd);

#ifdef __cplusplus
}
#endif

#endif /* EDGELM_SERIAL_H */
