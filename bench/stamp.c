/* bench/stamp.c: a benchmark service. At start it sends "<pid> <CLOCK_MONOTONIC ns>" as one
 * datagram to the unix socket named by argv[1], then waits for a signal forever. The
 * benchmark uses the time stamp as "the replacement has exec'd". */
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (argc > 1) {
        int s = socket(AF_UNIX, SOCK_DGRAM, 0);
        struct sockaddr_un a;
        memset(&a, 0, sizeof a);
        a.sun_family = AF_UNIX;
        strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
        char buf[64];
        int n = snprintf(buf, sizeof buf, "%d %lld", (int)getpid(),
                         (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
        sendto(s, buf, n, 0, (struct sockaddr *)&a, sizeof a);
        close(s);
    }
    for (;;) pause();
}
