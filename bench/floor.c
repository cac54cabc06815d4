/* bench/floor.c: the least a supervisor can do, as a yardstick for compare.py.
 *
 *     floor <stamp-exe> <stamp-sock> <n> [<cgroup-root>]
 *
 * Starts n services s0..s{n-1}, each execve(stamp-exe, [stamp-exe, stamp-sock, "s<i>"])
 * with this process's own environment, and starts a service again the moment it dies: no
 * delay, no limit, no state, no logging. With a cgroup root (a directory on a cgroup2
 * mount) every service is created straight inside <root>/s<i> by clone3 with
 * CLONE_INTO_CGROUP, as hachain's restarter does; without one it is a plain fork().
 * Deaths come in the way an event loop takes them: SIGCHLD is blocked and read from a
 * signalfd that epoll_wait watches. SIGTERM or SIGINT: SIGKILL every service, reap them,
 * remove the cgroups made here, exit 0. Nothing else: this is the floor, not a product. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static const char *exe, *sock, *root;
static int n;
static pid_t *pids;   /* pids[i]: the running s<i>, 0 when none */
static int *cgfd;     /* cgfd[i]: O_DIRECTORY fd of <root>/s<i> (cgroup mode) */
static char **names;  /* "s<i>" */
static sigset_t old_mask;

/* The child's side of a spawn: undo the blocked signals (a mask survives execve), exec. */
static void child(int i) {
    char *argv[] = {(char *)exe, (char *)sock, names[i], NULL};
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
    execve(exe, argv, environ);
    _exit(127);
}

/* Start s<i> now. clone3 without CLONE_VM gives the child its own copy of memory, like
 * fork(), so it may run ordinary code until execve. */
static void spawn(int i) {
    pid_t pid;
    if (root) {
        struct clone_args a;
        memset(&a, 0, sizeof a);
        a.flags = CLONE_INTO_CGROUP;
        a.exit_signal = SIGCHLD;
        a.cgroup = (uint64_t)cgfd[i];
        pid = (pid_t)syscall(SYS_clone3, &a, sizeof a);
    } else {
        pid = fork();
    }
    if (pid == 0) child(i);
    if (pid < 0) {
        perror("floor: spawn");
        pid = 0;
    }
    pids[i] = pid;
}

/* rmdir a cgroup, retrying briefly: a just-reaped task may hold it busy for a moment. */
static void remove_dir(const char *path) {
    struct timespec pause = {0, 10 * 1000 * 1000};
    for (int k = 0; k < 100 && rmdir(path) < 0 && errno == EBUSY; k++) nanosleep(&pause, NULL);
}

static void shut_down(void) {
    for (int i = 0; i < n; i++)
        if (pids[i] > 0) kill(pids[i], SIGKILL);
    while (waitpid(-1, NULL, 0) > 0 || errno == EINTR) {}  /* until ECHILD */
    if (!root) return;
    char path[4096];
    for (int i = 0; i < n; i++) {
        close(cgfd[i]);
        snprintf(path, sizeof path, "%s/%s", root, names[i]);
        remove_dir(path);
    }
    remove_dir(root);
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 5 || (n = atoi(argv[3])) <= 0) {
        fprintf(stderr, "usage: floor <stamp-exe> <stamp-sock> <n> [<cgroup-root>]\n");
        return 2;
    }
    exe = argv[1];
    sock = argv[2];
    root = argc == 5 ? argv[4] : NULL;
    pids = calloc((size_t)n, sizeof *pids);
    cgfd = calloc((size_t)n, sizeof *cgfd);
    names = calloc((size_t)n, sizeof *names);
    if (!pids || !cgfd || !names) return 1;
    char path[4096];
    if (root && mkdir(root, 0755) < 0 && errno != EEXIST) {
        perror(root);
        return 1;
    }
    for (int i = 0; i < n; i++) {
        if (asprintf(&names[i], "s%d", i) < 0) return 1;
        if (!root) continue;
        snprintf(path, sizeof path, "%s/%s", root, names[i]);
        if ((mkdir(path, 0755) < 0 && errno != EEXIST) ||
            (cgfd[i] = open(path, O_DIRECTORY | O_RDONLY | O_CLOEXEC)) < 0) {
            perror(path);
            return 1;
        }
    }

    /* Block the signals we wait for and read them from a signalfd watched by epoll. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, &old_mask);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = sfd};
    if (sfd < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev) < 0) {
        perror("floor: signalfd/epoll");
        return 1;
    }

    for (int i = 0; i < n; i++) spawn(i);

    for (;;) {
        if (epoll_wait(ep, &ev, 1, -1) < 0) {
            if (errno == EINTR) continue;
            perror("floor: epoll_wait");
            return 1;
        }
        /* Drain the signalfd; several SIGCHLDs may have merged into one. */
        struct signalfd_siginfo si[16];
        ssize_t got;
        int stop = 0;
        while ((got = read(sfd, si, sizeof si)) > 0)
            for (size_t k = 0; k < (size_t)got / sizeof si[0]; k++)
                if (si[k].ssi_signo != SIGCHLD) stop = 1;
        if (stop) {
            shut_down();
            return 0;
        }
        /* Reap every dead child and start its service again at once. A linear search
         * for the pid: n is at most a few thousand, a fork costs far more. */
        int st;
        pid_t pid;
        while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
            for (int i = 0; i < n; i++)
                if (pids[i] == pid) {
                    spawn(i);
                    break;
                }
    }
}
