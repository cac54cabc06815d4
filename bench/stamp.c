/* bench/stamp.c: the service every benchmark here runs, hachain's and the peers' alike.
 *
 * First thing in main() it sends "<pid> <CLOCK_MONOTONIC ns>" as one datagram, then
 * pause()s forever: the benchmarks take that stamp as "the replacement has exec'd".
 * benchlib.compile_stamp links it statically, so the stamp is taken right after execve
 * returns; a dynamically linked stamp would add the dynamic loader's work (~0.3 ms here,
 * the same for every supervisor) to each restart (`--dynamic-stamp` measures that way).
 *
 * Where it reports to:
 *  - the stamp socket comes from $STAMP_SOCK when set, else from argv[1]: s6 and runit
 *    exec ./run (a symlink to this binary) and s6-supervise passes the service directory's
 *    name as argv[1], so for them the path travels in the environment;
 *  - when $NOTIFY_SOCKET is set, it also sends READY=1 there (systemd's sd_notify
 *    protocol; a leading '@' names an abstract socket), so one binary serves both the
 *    ready = "none" and the ready = "notify" runs;
 *  - when $STAMP_READY_FD is set, it writes a newline to that fd and closes it: s6's
 *    notification-fd protocol. s6-supervise (2.11) restarts a dead service at once only
 *    when it reported readiness more than a second before dying, and waits 1 s otherwise,
 *    so this is s6's fastest restart setting.
 * Extra arguments are ignored; compare.py passes the service name as argv[2] so it can
 * tell which service a process belongs to. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Sends one datagram to the AF_UNIX socket at path ('@' prefix: abstract namespace). */
static void send_to(const char *path, const char *buf, size_t n) {
    struct sockaddr_un a;
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof a.sun_path) return;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    memcpy(a.sun_path, path, len);
    if (path[0] == '@') a.sun_path[0] = '\0';
    int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return;
    sendto(s, buf, n, 0, (struct sockaddr *)&a, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len));
    close(s);
}

int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    const char *sock = getenv("STAMP_SOCK");
    if (!sock && argc > 1) sock = argv[1];
    if (sock) {
        char buf[64];
        int n = snprintf(buf, sizeof buf, "%d %lld", (int)getpid(),
                         (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
        send_to(sock, buf, (size_t)n);
    }
    const char *notify = getenv("NOTIFY_SOCKET");
    if (notify) send_to(notify, "READY=1", 7);
    const char *rfd = getenv("STAMP_READY_FD");
    if (rfd) {
        int fd = atoi(rfd);
        if (write(fd, "\n", 1) < 0) { /* not ours to report */ }
        close(fd);
    }
    for (;;) pause();
}
