/* raw_epoll.c: the "kernel ceiling" peer for scripts/bench http.
 *
 * A minimal single-threaded, edge-triggered epoll HTTP/1.1 responder: accept4 nonblocking,
 * read each connection until EAGAIN, count complete requests by scanning for "\r\n\r\n"
 * (bodies are not supported: GET only), and answer them with one write per read batch of
 * canned "hello world\n" responses. No parsing, no allocation per request.
 *
 * Build: gcc -O2 -o raw_epoll raw_epoll.c
 * Usage: raw_epoll PORT   binds 127.0.0.1:PORT (0: any free port) and prints
 *        "listening 127.0.0.1:PORT" once bound.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define RESP "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n\r\nhello world\n"
#define RESP_LEN (sizeof(RESP) - 1)
#define MAX_FD 65536
#define RBUF 65536
#define MAX_BATCH 512 /* responses per write; a larger batch is written in several */

/* Per connection: how many bytes of a possible "\r\n\r\n" ended the previous read. */
static unsigned char partial[MAX_FD];
static char rbuf[RBUF];
static char wbuf[MAX_BATCH * RESP_LEN];

static void close_conn(int fd) {
    partial[fd] = 0;
    close(fd);
}

/* Count "\r\n\r\n" in buf, continuing a match of *state bytes from the previous read. */
static long count_requests(const char *buf, ssize_t n, unsigned char *state) {
    static const char pat[4] = {'\r', '\n', '\r', '\n'};
    long count = 0;
    unsigned s = *state;
    for (ssize_t i = 0; i < n; i++) {
        char c = buf[i];
        if (c == pat[s]) {
            if (++s == 4) {
                count++;
                s = 0;
            }
        } else {
            s = (c == '\r') ? 1 : 0;
        }
    }
    *state = (unsigned char)s;
    return count;
}

/* Write all of buf. No write buffering: a write is at most ~40 KiB of responses to a client that
 * reads them, so a full socket buffer (EAGAIN) is treated as an error and closes the connection. */
static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t w = write(fd, buf, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

static int respond(int fd, long count) {
    while (count > 0) {
        long k = count < MAX_BATCH ? count : MAX_BATCH;
        if (write_all(fd, wbuf, (size_t)k * RESP_LEN) < 0) return -1;
        count -= k;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < MAX_BATCH; i++) memcpy(wbuf + (size_t)i * RESP_LEN, RESP, RESP_LEN);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) { perror("socket"); return 1; }
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[1]));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("bind"); return 1; }
    if (listen(lfd, 4096) < 0) { perror("listen"); return 1; }

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) { perror("epoll_create1"); return 1; }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) { perror("epoll_ctl"); return 1; }
    socklen_t alen = sizeof addr;
    if (getsockname(lfd, (struct sockaddr *)&addr, &alen) < 0) { perror("getsockname"); return 1; }
    printf("listening 127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stdout);

    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                for (;;) {
                    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (c < 0) break; /* EAGAIN or a transient error: wait for the next event */
                    if (c >= MAX_FD) { close(c); continue; }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    partial[c] = 0;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLET | EPOLLRDHUP, .data.fd = c};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev) < 0) close(c);
                }
                continue;
            }
            long requests = 0;
            int closed = 0;
            for (;;) {
                ssize_t r = read(fd, rbuf, RBUF);
                if (r > 0) {
                    requests += count_requests(rbuf, r, &partial[fd]);
                    continue;
                }
                if (r < 0 && errno == EINTR) continue;
                if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
                closed = 1; /* EOF or error */
                break;
            }
            if (requests > 0 && respond(fd, requests) < 0) closed = 1;
            if (closed) close_conn(fd);
        }
    }
}
