/* serial.c - raw tty I/O for the board's end of the link (see serial.h). */
#define _DEFAULT_SOURCE /* cfmakeraw, cfsetspeed, B* rates above 38400 */
#include "serial.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

/* ----------------------------------------------------------------------------
 * Baud rates */

typedef struct {
    long baud;   /* bits per second */
    speed_t code; /* termios B* constant */
} BaudRate;

static const BaudRate baud_rates[] = {
    {1200, B1200},       {2400, B2400},       {4800, B4800},       {9600, B9600},
    {19200, B19200},     {38400, B38400},     {57600, B57600},     {115200, B115200},
    {230400, B230400},   {460800, B460800},   {500000, B500000},   {576000, B576000},
    {921600, B921600},   {1000000, B1000000}, {1152000, B1152000}, {1500000, B1500000},
    {2000000, B2000000}, {2500000, B2500000}, {3000000, B3000000}, {3500000, B3500000},
    {4000000, B4000000},
};

static int baud_code(long baud, speed_t *code) {
    for (size_t i = 0; i < sizeof baud_rates / sizeof baud_rates[0]; i++) {
        if (baud_rates[i].baud == baud) {
            *code = baud_rates[i].code;
            return 0;
        }
    }
    return -1;
}

int serial_baud_supported(long baud) {
    speed_t code;
    return baud_code(baud, &code) == 0;
}

/* ----------------------------------------------------------------------------
 * Open / close */

int serial_open(const char *path, long baud, char *err, size_t err_cap) {
    speed_t speed;
    if (baud_code(baud, &speed) != 0) {
        snprintf(err, err_cap, "cannot open serial device %s: unsupported baud rate %ld", path, baud);
        return -1;
    }
    int fd = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, err_cap, "cannot open serial device %s: %s", path, strerror(errno));
        return -1;
    }
    if (!isatty(fd)) {
        snprintf(err, err_cap, "cannot open serial device %s: not a terminal device", path);
        close(fd);
        return -1;
    }
#ifdef TIOCEXCL
    /* Further opens fail with EBUSY (except for root). Not every driver supports it. */
    if (ioctl(fd, TIOCEXCL) != 0 && errno != ENOTTY && errno != EINVAL) {
        snprintf(err, err_cap, "cannot open serial device %s: TIOCEXCL: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
#endif
    struct termios tio;
    if (tcgetattr(fd, &tio) != 0) {
        snprintf(err, err_cap, "cannot open serial device %s: tcgetattr: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    cfmakeraw(&tio);                  /* 8 data bits, no parity, no echo, no translation */
    tio.c_cflag |= CLOCAL | CREAD;    /* ignore modem lines, enable the receiver */
    tio.c_cflag &= ~(tcflag_t)CSTOPB; /* 1 stop bit */
#ifdef CRTSCTS
    tio.c_cflag &= ~(tcflag_t)CRTSCTS; /* no hardware flow control */
#endif
    tio.c_cc[VMIN] = 1; /* read() blocks for at least one byte */
    tio.c_cc[VTIME] = 0;
    if (cfsetispeed(&tio, speed) != 0 || cfsetospeed(&tio, speed) != 0 ||
        tcsetattr(fd, TCSANOW, &tio) != 0) {
        snprintf(err, err_cap, "cannot open serial device %s: cannot set raw mode at %ld baud: %s",
                 path, baud, strerror(errno));
        close(fd);
        return -1;
    }
    tcflush(fd, TCIFLUSH); /* line noise from before we were listening */
    return fd;
}

void serial_release(int fd) {
#ifdef TIOCNXCL
    /* The exclusive hold ends with us even if another process (a pty's other end) keeps the tty
     * open; otherwise the next runner, not root, would find it busy. */
    if (fd >= 0) (void)ioctl(fd, TIOCNXCL);
#else
    (void)fd;
#endif
}

void serial_close(int fd) {
    if (fd < 0) return;
    serial_release(fd);
    close(fd);
}

/* ----------------------------------------------------------------------------
 * Read / write */

ssize_t serial_read(int fd, uint8_t *buf, size_t cap) {
    for (;;) {
        ssize_t n = read(fd, buf, cap);
        if (n >= 0) return n;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) { /* someone set O_NONBLOCK: wait */
            struct pollfd p = {.fd = fd, .events = POLLIN, .revents = 0};
            if (poll(&p, 1, -1) < 0 && errno != EINTR) return -1;
            continue;
        }
        return -1;
    }
}

int serial_write_all(int fd, const uint8_t *buf, size_t n) {
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, buf + done, n - done);
        if (w > 0) {
            done += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd p = {.fd = fd, .events = POLLOUT, .revents = 0};
            if (poll(&p, 1, -1) < 0 && errno != EINTR) return -1;
            continue;
        }
        if (w == 0) errno = EIO;
        return -1;
    }
    return 0;
}
