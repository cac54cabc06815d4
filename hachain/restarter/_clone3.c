/* hachain.restarter._clone3: start a service process straight into its cgroup.
 *
 * One function, spawn(), starts a service process as the restarter's other paths do
 * (stdin from /dev/null, stdout and stderr to one descriptor, a process group of its own,
 * default signal dispositions, an empty signal mask; and where configured a working
 * directory, umask, rlimits, user and groups, a readiness descriptor), with one
 * difference: the child is created inside the service's cgroup by
 * clone3(CLONE_INTO_CGROUP) (Linux 5.7).
 *
 * Why: the alternative, moving a process into a cgroup by writing cgroup.procs, takes
 * the kernel's global cgroup_threadgroup_rwsem for writing. Unless cgroup2 is mounted
 * with favordynmods, that write lock waits for an RCU grace period, which takes
 * milliseconds on a machine that has been idle (docs/benchmarks.md, "restart after
 * idle"). A child born in the cgroup migrates nothing: fork takes that lock for reading
 * only.
 *
 * How: like glibc's posix_spawn, clone3 with CLONE_VM | CLONE_VFORK on a stack of its
 * own; the parent sleeps until the child has exec'd (or died), and the child touches
 * only its own stack and the request it was given. Python has no clone3 wrapper, and the
 * child must not run Python code (it shares the parent's memory), hence C; the child's
 * entry needs a few instructions of assembly, so this is x86_64 only. Elsewhere, or where
 * the kernel refuses CLONE_INTO_CGROUP, spawn.py moves the restarter itself in and out of
 * the cgroup around os.posix_spawn instead (the fallback; docs/restarter.md).
 *
 * Built by setup.py as an optional extension: without a C compiler the package installs
 * without it and the fallback runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <net/if.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <grp.h>
#include <linux/capability.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "../_record.h"

#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_RAISE 2
#endif
#ifndef PR_SET_NO_NEW_PRIVS
#define PR_SET_NO_NEW_PRIVS 38
#endif

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

#if defined(__x86_64__) && defined(SYS_clone3)
#define HAVE_CLONE3_ENTRY 1
#else
#define HAVE_CLONE3_ENTRY 0
#endif

struct clone_args_v2 {  /* struct clone_args up to `cgroup` (CLONE_ARGS_SIZE_VER2) */
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
    uint64_t set_tid, set_tid_size, cgroup;
};

/* One step of the service's mount namespace (hachain/sandbox.py: the kinds' numbers) */
struct mnt_step {
    int kind;
    const char *path;
    int optional;  /* a missing path is skipped */
    const char *data;  /* MNT_PROC: the new procfs's options ("hidepid=invisible") */
};
#define MNT_TMPFS 1
#define MNT_READ_ONLY 2
#define MNT_READ_WRITE 3
#define MNT_HIDE 4
#define MNT_EMPTY 5
#define MNT_KEEP 6  /* the path keeps what it was before the other steps (open_tree) */
#define MNT_DEVICES 7  /* a private /dev: tmpfs, the host's pseudo devices bound in */
#define MNT_PROC 8  /* a procfs instance of its own on the path, with `data` */
#define MNT_NO_EXEC 9  /* bound onto itself, nothing below it executable */
#define MNT_EXEC 10  /* bound onto itself, executable again below it */
#define MNT_ATTR_NOEXEC_ 0x8
#define MNT_LATE 16  /* added to a kind: the step comes after the MNT_KEEP paths are back */
#define MAX_KEEP 8

/* mount_setattr, open_tree, move_mount (Linux 5.12, 5.2, 5.2): numbered alike on every
 * architecture; struct mount_attr spelled out for a libc that lacks it */
struct mnt_attr {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#define MNT_ATTR_RDONLY 0x1
#define AT_RECURSIVE_ 0x8000
#define OPEN_TREE_CLONE_ 1
#define MOVE_MOUNT_F_EMPTY_PATH_ 0x4

struct limit {
    int resource;
    struct rlimit value;
};

#ifndef PR_SET_SECCOMP
#define PR_SET_SECCOMP 22
#endif
#define SECCOMP_MODE_FILTER_ 2
struct filter_prog {  /* struct sock_fprog: the program's length in instructions */
    unsigned short len;
    const void *filter;
};
#define MAX_FILTERS 16
#define MAX_LISTEN 1024  /* descriptors handed to a service: listen, fd_store_max */

struct request {
    const char *path;
    char *const *argv;
    char *const *envp;
    int out_fd;
    int has_nofile;
    struct rlimit nofile;
    sigset_t sigdef;
    /* the optional set-up, in the order the child applies it */
    const char *cwd;       /* NULL: none */
    int umask;             /* -1: none */
    struct limit *limits;  /* rlimits (before the credentials: raising needs root) */
    int nlimits;
    int has_groups;
    gid_t *groups;
    int ngroups;
    long gid, uid;         /* -1: none */
    int ready_from, ready_to;  /* -1: none */
    char oom[16];          /* the oom_score_adj to write, as text ("": none) */
    int oom_len;
    volatile int oom_err;  /* errno of a refused oom_score_adj write: the child goes on */
    uint64_t caps;         /* ambient capabilities kept across the user switch (0: none) */
    int no_new_privs;      /* PR_SET_NO_NEW_PRIVS before the exec */
    long long bset;        /* the capability bounding set kept (-1: left as it is) */
    struct mnt_step *mounts;  /* > 0 of them: a mount namespace of its own, these steps */
    int nmounts;
    int has_nice, nice;    /* setpriority */
    const char *tty;       /* a session of its own on this terminal, as 0-2 (NULL: none) */
    int tty_flags;         /* TTY_RESET, TTY_VHANGUP */
    int sched_policy, sched_priority;  /* sched_setscheduler (policy -1: none) */
    int ioprio;            /* ioprio_set of itself (-1: none) */
    const char *affinity;  /* sched_setaffinity mask (affinity_len 0: none) */
    int affinity_len;
    int private_network;   /* a network namespace of its own, its loopback up */
    int unshare_flags;     /* CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWNS (a bare mount
                            * namespace: no mount step) to unshare as well */
    int join_fd, join_flags;  /* join_fd >= 0: setns into these namespaces of a running
                               * service (a pidfd of its main process) */
    struct filter_prog filters[MAX_FILTERS];  /* seccomp programs, installed last */
    int nfilters;
    int listen[MAX_LISTEN];  /* to hand over as 3, 4, ... (systemd's LISTEN_FDS) */
    int nlisten;
    int listen_pid_at;     /* envp[listen_pid_at] becomes "LISTEN_PID=<the child's pid>" */
    char listen_pid[32];
    int unshare_below;     /* > 0: the child shares our descriptor table until it makes
                            * its own of the descriptors below this one (see SLOTS) */
    volatile int entered;  /* set by the child first thing: it ran at all */
    volatile int err;   /* written by the child when a step fails */
    volatile int step;  /* which step failed: see STEPS below */
};

static int last_oom_err = 0;  /* the last spawn's refused oom_score_adj write (0: none) */

/* The child's stack. The GIL is held for the whole call and the parent sleeps until the
 * child has exec'd, so one stack serves every spawn. */
static char child_stack[64 * 1024] __attribute__((aligned(16)));

static int fail(struct request *r, int step) {
    r->err = errno;
    r->step = step;
    return 127;
}

/* private_devices: a tmpfs on /dev with the host's pseudo devices (and shm, mqueue,
 * hugepages) bound in from clones taken before it covers them, a devpts instance of its
 * own, and the usual links (hachain/sandbox.py, DEVICE_NODES and DEVICE_DIRS). A node or
 * directory the host lacks is left out. 0, or -1 with errno set. */
static int private_dev(void) {
    static const char *const nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};
    static const char *const dirs[] = {"shm", "mqueue", "hugepages"};
    enum { NN = sizeof nodes / sizeof *nodes, ND = sizeof dirs / sizeof *dirs };
    int fds[NN + ND];
    char p[64];
    int rc = -1, e = 0;
    for (int i = 0; i < NN + ND; i++) {
        snprintf(p, sizeof p, "/dev/%s", i < NN ? nodes[i] : dirs[i - NN]);
        fds[i] = (int)syscall(SYS_open_tree, AT_FDCWD, p,
                              OPEN_TREE_CLONE_ | O_CLOEXEC | (i < NN ? 0 : AT_RECURSIVE_));
        if (fds[i] < 0 && errno != ENOENT) {
            e = errno;
            for (int j = 0; j < i; j++)
                if (fds[j] >= 0)
                    close(fds[j]);
            errno = e;
            return -1;
        }
    }
    if (mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755") < 0)
        goto out;
    for (int i = 0; i < NN + ND; i++) {
        if (fds[i] < 0)
            continue;
        snprintf(p, sizeof p, "/dev/%s", i < NN ? nodes[i] : dirs[i - NN]);
        if (i < NN) {
            int f = open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0666);
            if (f < 0)
                goto out;
            close(f);
        } else if (mkdir(p, 0755) < 0) {
            goto out;
        }
        if (syscall(SYS_move_mount, fds[i], "", AT_FDCWD, p, MOVE_MOUNT_F_EMPTY_PATH_) < 0)
            goto out;
    }
    if (mkdir("/dev/pts", 0755) < 0 ||
        mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620") < 0 ||
        symlink("pts/ptmx", "/dev/ptmx") < 0 || symlink("/proc/self/fd", "/dev/fd") < 0 ||
        symlink("/proc/self/fd/0", "/dev/stdin") < 0 ||
        symlink("/proc/self/fd/1", "/dev/stdout") < 0 ||
        symlink("/proc/self/fd/2", "/dev/stderr") < 0)
        goto out;
    rc = 0;
out:
    e = errno;
    for (int i = 0; i < NN + ND; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    errno = e;
    return rc;
}

/* One step (not MNT_KEEP): 0, or -1 with errno set. */
static int mount_step(const struct mnt_step *m) {
    struct stat st;
    if (stat(m->path, &st) < 0)
        return m->optional && errno == ENOENT ? 0 : -1;
    unsigned long hidden = MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY;
    switch (m->kind & ~MNT_LATE) {
    case MNT_TMPFS:
        return mount("tmpfs", m->path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    case MNT_HIDE:
        return mount("tmpfs", m->path, "tmpfs", hidden, "mode=000");
    case MNT_EMPTY:
        return mount("tmpfs", m->path, "tmpfs", hidden, "mode=755");
    case MNT_DEVICES:
        return private_dev();
    case MNT_PROC:
        return mount("proc", m->path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, m->data);
    case MNT_READ_ONLY:
    case MNT_READ_WRITE:
    case MNT_NO_EXEC:
    case MNT_EXEC: {
        int kind = m->kind & ~MNT_LATE;
        int ro = kind == MNT_READ_ONLY;
        /* "/" is changed where it is: a mount stacked on it would not be the root this
         * process resolves paths from. Any other path gets a mount of its own first. */
        int root = m->path[0] == '/' && m->path[1] == 0;
        if (!root && mount(m->path, m->path, NULL, MS_BIND | MS_REC, NULL) < 0)
            return -1;
        struct mnt_attr a;
        memset(&a, 0, sizeof a);
        if (kind == MNT_NO_EXEC)
            a.attr_set = MNT_ATTR_NOEXEC_;
        else if (kind == MNT_EXEC)
            a.attr_clr = MNT_ATTR_NOEXEC_;
        else if (ro)
            a.attr_set = MNT_ATTR_RDONLY;
        else
            a.attr_clr = MNT_ATTR_RDONLY;
        if (syscall(SYS_mount_setattr, AT_FDCWD, m->path, AT_RECURSIVE_, &a, sizeof a) == 0)
            return 0;
        if (errno != ENOSYS || kind == MNT_NO_EXEC || kind == MNT_EXEC)
            return -1;  /* (exec paths: Linux >= 5.12 only) */
        /* before Linux 5.12: the path's own mount only */
        return mount(NULL, m->path, NULL, MS_BIND | MS_REMOUNT | (ro ? MS_RDONLY : 0), NULL);
    }
    }
    errno = EINVAL;
    return -1;
}

/* The service's mount namespace: its own, with the mounts below / made slaves (nothing
 * of ours propagates back), then the steps in order, the MNT_KEEP paths cloned before
 * and put back after them, then the MNT_LATE steps. 0, or the failed step (16: the namespace; 200 + i). */
static int mount_steps(struct request *r) {
    int kept[MAX_KEEP];
    int nkept = 0;
    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0)
        return 16;
    for (int i = 0; i < r->nmounts; i++) {
        const struct mnt_step *m = &r->mounts[i];
        if (m->kind != MNT_KEEP)
            continue;
        int fd = -1;
        if (nkept < MAX_KEEP) {
            fd = (int)syscall(SYS_open_tree, AT_FDCWD, m->path,
                              OPEN_TREE_CLONE_ | AT_RECURSIVE_ | O_CLOEXEC);
            if (fd < 0 && !(errno == ENOENT && m->optional) && errno != ENOSYS)
                return 200 + i;
        }
        kept[nkept++] = fd;
    }
    for (int i = 0; i < r->nmounts; i++)
        if (r->mounts[i].kind != MNT_KEEP && !(r->mounts[i].kind & MNT_LATE) &&
            mount_step(&r->mounts[i]) < 0)
            return 200 + i;
    nkept = 0;
    for (int i = 0; i < r->nmounts; i++) {
        const struct mnt_step *m = &r->mounts[i];
        if (m->kind != MNT_KEEP || nkept >= MAX_KEEP)
            continue;
        int fd = kept[nkept++];
        if (fd < 0)
            continue;
        if (syscall(SYS_move_mount, fd, "", AT_FDCWD, m->path, MOVE_MOUNT_F_EMPTY_PATH_) < 0)
            return 200 + i;
        close(fd);
    }
    for (int i = 0; i < r->nmounts; i++)
        if ((r->mounts[i].kind & MNT_LATE) && mount_step(&r->mounts[i]) < 0)
            return 200 + i;
    return 0;
}

/* private_network: a network namespace of its own with only its loopback, brought up
 * (systemd's PrivateNetwork=). 0, or -1 with errno set. */
static int private_net(void) {
    if (unshare(CLONE_NEWNET) < 0)
        return -1;
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    int rc = ioctl(s, SIOCGIFFLAGS, &ifr);
    if (rc == 0) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        rc = ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    int e = errno;
    close(s);
    errno = e;
    return rc < 0 ? -1 : 0;
}

static int to_fd(int from, int to) {
    if (from == to)  /* dup2 would keep close-on-exec */
        return fcntl(to, F_SETFD, 0);
    return dup2(from, to);
}

enum { TTY_RESET = 1, TTY_VHANGUP = 2 };

/* tty_path: the child, a session leader now, takes the terminal as its controlling one
 * (hung up first with TTY_VHANGUP: whatever still had it open loses it; its settings
 * made sane with TTY_RESET) and as its stdin, stdout and stderr. 0, or -1 with errno. */
static int tty_step(struct request *r) {
    int fd = open(r->tty, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fd < 0 || ioctl(fd, TIOCSCTTY, 0) < 0)
        return -1;
    if (r->tty_flags & TTY_VHANGUP) {
        /* the hang-up signals the terminal's session, which is ours now: ignored for
         * that moment (as systemd does), its default again before the exec. (Our
         * signals are blocked here, and a blocked signal is queued even when ignored:
         * setting SIG_IGN once more afterwards discards it.) */
        struct sigaction ign, dfl;
        memset(&ign, 0, sizeof ign);
        ign.sa_handler = SIG_IGN;
        dfl = ign;
        dfl.sa_handler = SIG_DFL;
        sigaction(SIGHUP, &ign, NULL);
        int rc = ioctl(fd, TIOCVHANGUP);
        sigaction(SIGHUP, &ign, NULL);
        sigaction(SIGHUP, &dfl, NULL);
        if (rc < 0)
            return -1;
        close(fd);  /* hung up with the rest: open it afresh */
        fd = open(r->tty, O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (fd < 0 || ioctl(fd, TIOCSCTTY, 0) < 0)
            return -1;
    }
    if (r->tty_flags & TTY_RESET) {
        struct termios t;
        if (tcgetattr(fd, &t) == 0) {
            t.c_iflag &= ~(tcflag_t)(IGNBRK | BRKINT | ISTRIP | INLCR | IGNCR | IUCLC);
            t.c_iflag |= ICRNL | IMAXBEL | IUTF8;
            t.c_oflag |= ONLCR | OPOST;
            t.c_cflag |= CREAD;
            t.c_lflag |= ISIG | ICANON | IEXTEN | ECHO | ECHOE | ECHOK | ECHOCTL | ECHOKE;
            tcsetattr(fd, TCSANOW, &t);
        }
    }
    if (to_fd(fd, 0) < 0 || to_fd(fd, 1) < 0 || to_fd(fd, 2) < 0)
        return -1;
    return 0;
}

/* SLOTS. A child made without CLONE_FILES gets a copy of every descriptor the restarter
 * holds (with 100 services some 300: kept cgroup directories and cgroup.events, held
 * output pipes), and its exec closes them all again: 0.2-0.4 us each on a cold CPU, 109 us
 * per spawn with 300 (bench: spawn to the child's main, static program, 0.3 s of quiet
 * before each; docs/benchmarks.md, thirteenth session). So the child shares our table
 * (CLONE_FILES) and first of all makes its own with close_range(below, ~0,
 * CLOSE_RANGE_UNSHARE), which copies only the descriptors under `below`. What the child
 * needs from us must be down there: two low descriptors are reserved here (slot_out,
 * slot_ready; /dev/null while unused), the output and readiness descriptors are put into
 * them just before the clone, and /dev/null again right after. The parent sleeps until the
 * child has exec'd (CLONE_VFORK); the restarter's other threads (user lookups, the
 * persist writer, check commands) open only descriptors marked close-on-exec, so what
 * the child may copy of theirs closes at its exec. Linux >= 5.9; elsewhere the table is
 * copied. */
static int slot_null = -1, slot_out = -1, slot_ready = -1;
static int slots_tried = 0;

static int reserve_slots(void) {
    if (slots_tried)
        return slot_out >= 0;
    slots_tried = 1;
    /* closes nothing: does the kernel know close_range? (Linux 5.9, which brought
     * CLOSE_RANGE_UNSHARE with it.) Not asked with that flag: where a thread runs (the
     * user lookups' thread, a writer's) the table is shared, and unsharing it here would
     * split this thread's table from the others', each then keeping its own copy of every
     * descriptor open now: a file closed here would stay open there, a lock held, a
     * pipe's write end never at EOF (tests/test_spawn_fds.py). */
    if (syscall(SYS_close_range, ~0U, ~0U, 0) != 0)
        return 0;
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null < 0)
        return 0;
    int a = fcntl(null, F_DUPFD_CLOEXEC, 3);  /* never 0-2: the child replaces those */
    int b = a < 0 ? -1 : fcntl(null, F_DUPFD_CLOEXEC, 3);
    if (b < 0) {
        if (a >= 0)
            close(a);
        close(null);
        return 0;
    }
    slot_null = null;
    slot_out = a;
    slot_ready = b;
    return 1;
}

/* The listen sockets to 3, 4, ... (copied above all of those first, so that none is
 * overwritten before it is moved; the copies close at the exec) and LISTEN_PID, which
 * only the child knows, into its slot of envp. The ready fd is not among 3.. (config.py
 * checks). 0, or -1 with errno. */
static int listen_step(struct request *r) {
    int tmp[MAX_LISTEN];
    int base = 3 + r->nlisten;
    /* the child has a copy of our whole table here (no CLONE_FILES): whatever in it was
     * left inheritable by mistake closes at the exec, as on the shared-table path
     * (Linux >= 5.11), the ready fd excepted */
    if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) == 0 && r->ready_to >= 0 &&
        fcntl(r->ready_to, F_SETFD, 0) < 0)
        return -1;
    if (r->ready_to >= base)
        base = r->ready_to + 1;
    for (int i = 0; i < r->nlisten; i++)
        if ((tmp[i] = fcntl(r->listen[i], F_DUPFD_CLOEXEC, base)) < 0)
            return -1;
    for (int i = 0; i < r->nlisten; i++)
        if (dup2(tmp[i], 3 + i) < 0)  /* (dup2's copy is inherited over the exec) */
            return -1;
    snprintf(r->listen_pid, sizeof r->listen_pid, "LISTEN_PID=%ld", (long)syscall(SYS_getpid));
    ((char **)r->envp)[r->listen_pid_at] = r->listen_pid;  /* (ours: byte_array's) */
    return 0;
}

/* The child: runs on child_stack, in the parent's memory, until execve. */
static int child_main(void *arg) {
    struct request *r = arg;
    struct sigaction dfl, cur;
    sigset_t none;
    r->entered = 1;
    /* a command of a running service joins its namespaces (join_fd, a pidfd of its main
     * process), first: the descriptor is ours only until the table is unshared below */
    if (r->join_fd >= 0 && setns(r->join_fd, r->join_flags) < 0)
        return fail(r, 21);
    if (r->unshare_below > 0) {
        if (syscall(SYS_close_range, (unsigned)r->unshare_below, ~0U,
                    CLOSE_RANGE_UNSHARE) != 0)
            return fail(r, 11);  /* before anything touches a descriptor we share */
        /* and what is left above stderr closes at exec, even one left inheritable by
         * mistake: the service gets 0-2 and its readiness descriptor, made below
         * (Linux >= 5.11; before, an inheritable one there stays open, as it always did) */
        if (r->unshare_below > 3)
            syscall(SYS_close_range, 3U, (unsigned)r->unshare_below - 1, CLOSE_RANGE_CLOEXEC);
    }
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; s++) {
        if (s == SIGKILL || s == SIGSTOP)
            continue;
        if (sigismember(&r->sigdef, s) == 1 ||
            (sigaction(s, NULL, &cur) == 0 && cur.sa_handler != SIG_IGN &&
             cur.sa_handler != SIG_DFL))
            sigaction(s, &dfl, NULL);  /* a handler must never run here */
    }
    if (to_fd(r->out_fd, 1) < 0 || to_fd(r->out_fd, 2) < 0)
        return fail(r, 2);
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null < 0)
        return fail(r, 1);
    if (to_fd(null, 0) < 0)
        return fail(r, 2);
    /* while still root (a mount namespace needs CAP_SYS_ADMIN), and before the chdir, so
     * the working directory is looked up in the file system the service will see */
    if (r->nmounts > 0) {
        int st = mount_steps(r);
        if (st)
            return fail(r, st);
    }
    if (r->join_fd < 0 && r->private_network && private_net() < 0)  /* CAP_SYS_ADMIN */
        return fail(r, 20);
    if (r->unshare_flags &&
        (unshare(r->unshare_flags) < 0 ||
         ((r->unshare_flags & CLONE_NEWNS) &&
          mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0)))  /* CAP_SYS_ADMIN */
        return fail(r, 27);
    if (r->cwd && chdir(r->cwd) < 0)
        return fail(r, 6);
    if (r->umask >= 0)
        umask((mode_t)r->umask);
    if (r->tty) {  /* (still root: a terminal it may not open as its user, as systemd) */
        if (setsid() < 0)
            return fail(r, 3);
        if (tty_step(r) < 0)
            return fail(r, 25);
    } else if (setpgid(0, 0) < 0)
        return fail(r, 3);
    /* while still root: a nice below 0 needs CAP_SYS_NICE */
    if (r->has_nice && setpriority(PRIO_PROCESS, 0, r->nice) < 0)
        return fail(r, 17);
    /* still root: a real-time policy, or a realtime I/O class, needs CAP_SYS_NICE /
     * CAP_SYS_ADMIN */
    if (r->sched_policy >= 0) {
        struct sched_param sp = {.sched_priority = r->sched_priority};
        if (sched_setscheduler(0, r->sched_policy, &sp) < 0)
            return fail(r, 22);
    }
    if (r->ioprio >= 0 && syscall(SYS_ioprio_set, 1 /* IOPRIO_WHO_PROCESS */, 0, r->ioprio) < 0)
        return fail(r, 23);
    if (r->affinity_len > 0 &&
        sched_setaffinity(0, (size_t)r->affinity_len, (const cpu_set_t *)r->affinity) < 0)
        return fail(r, 24);
    if (r->has_nofile && setrlimit(RLIMIT_NOFILE, &r->nofile) < 0)
        return fail(r, 4);
    for (int i = 0; i < r->nlimits; i++)
        if (setrlimit(r->limits[i].resource, &r->limits[i].value) < 0)
            return fail(r, 100 + i);
    /* still root (dropping needs CAP_SETPCAP): every capability not kept leaves the
     * bounding set, for this process and all it runs; EINVAL: past the kernel's last */
    if (r->bset >= 0)
        for (int c = 0; c < 64; c++)
            if (!((unsigned long long)r->bset >> c & 1) &&
                prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0) {
                if (errno == EINVAL)
                    break;
                return fail(r, 18);
            }
    /* still root (a lower value needs CAP_SYS_RESOURCE). A vfork child's write is its
     * own: the kernel does not carry it to the parent that shares the memory. Refused,
     * the service runs at the value it inherited: the parent says so (last_oom_error) */
    if (r->oom_len > 0) {
        int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
        if (fd < 0) {
            r->oom_err = errno;
        } else {
            if (write(fd, r->oom, (size_t)r->oom_len) != r->oom_len)
                r->oom_err = errno;
            close(fd);
        }
    }
    /* raw system calls: glibc's wrappers would signal every thread of the process,
     * which here are the parent's */
    if (r->caps && syscall(SYS_prctl, PR_SET_KEEPCAPS, 1L, 0L, 0L, 0L) < 0)
        return fail(r, 13);  /* the permitted set survives the switch to the user */
    if (r->has_groups && syscall(SYS_setgroups, r->ngroups, r->groups) < 0)
        return fail(r, 7);
    if (r->gid >= 0 && syscall(SYS_setresgid, r->gid, r->gid, r->gid) < 0)
        return fail(r, 8);
    if (r->uid >= 0 && syscall(SYS_setresuid, r->uid, r->uid, r->uid) < 0)
        return fail(r, 9);
    if (r->caps) {
        /* only these, in every set, then ambient: the program keeps them over its exec
         * (it is no set-uid or file-capability program) */
        struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
        struct __user_cap_data_struct data[2];
        memset(data, 0, sizeof data);
        for (int i = 0; i < 2; i++)
            data[i].effective = data[i].permitted = data[i].inheritable =
                (uint32_t)(r->caps >> (32 * i));
        if (syscall(SYS_capset, &head, data) < 0)
            return fail(r, 13);
        for (long c = 0; c < 64; c++)
            if ((r->caps >> c) & 1 &&
                syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0L, 0L) < 0)
                return fail(r, 14);
    }
    if (r->no_new_privs && syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1L, 0L, 0L, 0L) < 0)
        return fail(r, 15);
    if (r->ready_from >= 0 && to_fd(r->ready_from, r->ready_to) < 0)
        return fail(r, 10);
    if (r->nlisten > 0 && listen_step(r) < 0)
        return fail(r, 26);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* the seccomp programs, last: nothing of ours runs under them but the exec (and,
     * should it fail, this function's return). Without CAP_SYS_ADMIN (a service that
     * runs as its own user) the kernel asks for no_new_privs first. */
    for (int i = 0, nnp = 0; i < r->nfilters; i++)
        while (syscall(SYS_prctl, PR_SET_SECCOMP, (long)SECCOMP_MODE_FILTER_,
                       &r->filters[i], 0L, 0L) < 0) {
            if (errno != EACCES || nnp)
                return fail(r, 19);
            if (syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1L, 0L, 0L, 0L) < 0)
                return fail(r, 15);
            nnp = 1;
        }
    execve(r->path, r->argv, r->envp);
    return fail(r, 5);
}

#if HAVE_CLONE3_ENTRY
/* clone3 whose child calls fn(arg) on the new stack and exits with its result: the
 * syscall returns 0 in the child with the stack pointer at the top of the new stack,
 * where no C frame exists to return into, so the call must follow the syscall in the
 * same instructions (as in glibc's clone3.S). */
static long clone3_call(struct clone_args_v2 *a, int (*fn)(void *), void *arg) {
    long ret;
    register void *r12 __asm__("r12") = (void *)fn;
    register void *r13 __asm__("r13") = arg;
    __asm__ volatile(
        "syscall\n\t"
        "test %%rax, %%rax\n\t"
        "jnz 1f\n\t"
        "xor %%ebp, %%ebp\n\t"
        "mov %%r13, %%rdi\n\t"
        "call *%%r12\n\t"
        "mov %%eax, %%edi\n\t"
        "mov $60, %%eax\n\t"  /* SYS_exit */
        "syscall\n\t"
        "hlt\n"
        "1:\n\t"
        : "=a"(ret)
        : "0"((long)SYS_clone3), "D"(a), "S"(sizeof *a), "r"(r12), "r"(r13)
        : "rcx", "r11", "memory");
    return ret;
}
#endif

/* A NULL-terminated char* array over a sequence of bytes objects (borrowed pointers:
 * the sequence must outlive the array). NULL with an exception set on a bad item. */
static char **byte_array(PyObject *seq, const char *what) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    char **out = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(item)) {
            PyErr_Format(PyExc_TypeError, "%s items must be bytes", what);
            PyMem_Free(out);
            return NULL;
        }
        out[i] = PyBytes_AS_STRING(item);
    }
    return out;
}

PyDoc_STRVAR(spawn_doc,
"spawn(path, argv, envp, out_fd, cgroup_fd, sigdef, nofile, setup=None, oom=None) -> pid\n\n"
"Start `path` with `argv` and `envp` (sequences of bytes) in the cgroup whose directory\n"
"`cgroup_fd` is open (-1: where the caller is), stdin /dev/null, stdout and stderr `out_fd`, its own process\n"
"group, the signals in `sigdef` (and any with a handler) at their default, an empty\n"
"signal mask, and RLIMIT_NOFILE `nofile` ((soft, hard) or None); `setup` is None or\n"
"(cwd bytes or None, umask or -1, groups or None, gid or -1, uid or -1,\n"
"[(resource, soft, hard)...], (from_fd, to_fd) or None, ambient capability mask or 0,\n"
"no_new_privs bool, mounts, nice or None, bounding set mask or -1, [seccomp program\n"
"bytes...], private_network bool, (pidfd, CLONE_NEW* flags) to setns into or None):\n"
"the mount steps ((kind, path bytes,\n"
"optional bool, data bytes)...: hachain/sandbox.py) before the chdir; chdir and umask before the\n"
"process group, then the private /tmp and the nice value, nofile and the rlimits\n"
"(while still root), the oom_score_adj `oom`\n"
"(an int, or None: inherited), the credentials (keeping the capabilities asked for, then\n"
"raised as ambient ones), no_new_privs, the ready fd, the seccomp programs (with\n"
"no_new_privs first where the kernel asks for it). Returns once the child\n"
"has exec'd. OSError when clone3 fails (ENOSYS, EINVAL, E2BIG: the kernel cannot;\n"
"the caller falls back), when the child was killed before it ran (filename\n"
"'clone3: killed at birth'), or when a step in the child fails; a failed child is\n"
"reaped here. The error's `filename` is the step: 'exec', 'setpgid', ...");

/* The optional set-up tuple (cwd, umask, groups, gid, uid, rlimits, ready, caps,
 * no_new_privs, mounts, nice or None, bounding set or -1) into `r`;
 * the arrays are PyMem allocations the caller frees. 0, or -1 with an exception set. */
static int parse_setup(PyObject *setup, struct request *r) {
    PyObject *cwd_o, *groups_o, *limits_o, *ready_o;
    int um;
    long gid, uid;
    unsigned long long caps;
    PyObject *nice_o, *mounts_o, *filters_o, *join_o, *sched_o, *tty_o, *listen_o;
    if (!PyArg_ParseTuple(setup, "OiOllOOKpOOLOpOOOOi", &cwd_o, &um, &groups_o, &gid, &uid,
                          &limits_o, &ready_o, &caps, &r->no_new_privs, &mounts_o, &nice_o,
                          &r->bset, &filters_o, &r->private_network, &join_o, &sched_o,
                          &tty_o, &listen_o, &r->unshare_flags))
        return -1;
    if (listen_o != Py_None) {
        PyObject *fds_o;
        if (!PyArg_ParseTuple(listen_o, "Oi", &fds_o, &r->listen_pid_at))
            return -1;
        PyObject *fs = PySequence_Fast(fds_o, "listen fds must be a sequence");
        if (fs == NULL)
            return -1;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(fs);
        if (n > MAX_LISTEN) {
            Py_DECREF(fs);
            PyErr_SetString(PyExc_ValueError, "too many listen sockets");
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(fs, i));
            if (v == -1 && PyErr_Occurred()) {
                Py_DECREF(fs);
                return -1;
            }
            r->listen[i] = (int)v;
        }
        r->nlisten = (int)n;
        Py_DECREF(fs);
    }
    if (tty_o != Py_None) {
        PyObject *tty_b;  /* its bytes live in `setup`, held for the whole call */
        if (!PyArg_ParseTuple(tty_o, "Si", &tty_b, &r->tty_flags))
            return -1;
        r->tty = PyBytes_AS_STRING(tty_b);
    }
    r->sched_policy = -1;
    r->ioprio = -1;
    if (sched_o != Py_None) {
        PyObject *mask_b;  /* its bytes live in `setup`, held for the whole call */
        if (!PyArg_ParseTuple(sched_o, "iiiS", &r->sched_policy, &r->sched_priority,
                              &r->ioprio, &mask_b))
            return -1;
        r->affinity = PyBytes_AS_STRING(mask_b);
        r->affinity_len = (int)PyBytes_GET_SIZE(mask_b);
    }
    r->join_fd = -1;
    if (join_o != Py_None && !PyArg_ParseTuple(join_o, "ii", &r->join_fd, &r->join_flags))
        return -1;
    PyObject *fs = PySequence_Fast(filters_o, "filters must be a sequence");
    if (fs == NULL)
        return -1;
    Py_ssize_t nf = PySequence_Fast_GET_SIZE(fs);
    if (nf > MAX_FILTERS) {
        Py_DECREF(fs);
        PyErr_SetString(PyExc_ValueError, "too many seccomp programs");
        return -1;
    }
    for (Py_ssize_t i = 0; i < nf; i++) {
        /* the program's bytes live in `setup`, which the caller holds for the whole call */
        PyObject *b = PySequence_Fast_GET_ITEM(fs, i);
        if (!PyBytes_Check(b) || PyBytes_GET_SIZE(b) % 8 || PyBytes_GET_SIZE(b) == 0 ||
            PyBytes_GET_SIZE(b) / 8 > 0xFFFF) {
            Py_DECREF(fs);
            PyErr_SetString(PyExc_ValueError, "a seccomp program must be bytes of whole "
                                              "8-byte instructions");
            return -1;
        }
        r->filters[i].len = (unsigned short)(PyBytes_GET_SIZE(b) / 8);
        r->filters[i].filter = PyBytes_AS_STRING(b);
    }
    r->nfilters = (int)nf;
    Py_DECREF(fs);
    PyObject *ms = PySequence_Fast(mounts_o, "mounts must be a sequence");
    if (ms == NULL)
        return -1;
    Py_ssize_t nm = PySequence_Fast_GET_SIZE(ms);
    r->mounts = PyMem_Calloc((size_t)nm + 1, sizeof(struct mnt_step));
    if (r->mounts == NULL) {
        Py_DECREF(ms);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < nm; i++) {
        PyObject *path_b;
        struct mnt_step *m = &r->mounts[i];
        /* the path's bytes live in `setup`, which the caller holds for the whole call */
        PyObject *data_b;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(ms, i), "iSpS", &m->kind, &path_b,
                              &m->optional, &data_b)) {
            Py_DECREF(ms);
            return -1;
        }
        m->path = PyBytes_AS_STRING(path_b);
        m->data = PyBytes_AS_STRING(data_b);
    }
    r->nmounts = (int)nm;
    Py_DECREF(ms);
    r->caps = (uint64_t)caps;
    if (nice_o != Py_None) {
        long v = PyLong_AsLong(nice_o);
        if (v == -1 && PyErr_Occurred())
            return -1;
        r->has_nice = 1;
        r->nice = (int)v;
    }
    if (cwd_o != Py_None) {
        if (!PyBytes_Check(cwd_o)) {
            PyErr_SetString(PyExc_TypeError, "cwd must be bytes or None");
            return -1;
        }
        r->cwd = PyBytes_AS_STRING(cwd_o);
    }
    r->umask = um;
    r->gid = gid;
    r->uid = uid;
    if (groups_o != Py_None) {
        PyObject *g = PySequence_Fast(groups_o, "groups must be a sequence");
        if (g == NULL)
            return -1;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(g);
        r->groups = PyMem_Calloc((size_t)n + 1, sizeof(gid_t));
        if (r->groups == NULL) {
            Py_DECREF(g);
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(g, i));
            if (v == -1 && PyErr_Occurred()) {
                Py_DECREF(g);
                return -1;
            }
            r->groups[i] = (gid_t)v;
        }
        Py_DECREF(g);
        r->has_groups = 1;
        r->ngroups = (int)n;
    }
    PyObject *l = PySequence_Fast(limits_o, "rlimits must be a sequence");
    if (l == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(l);
    r->limits = PyMem_Calloc((size_t)n + 1, sizeof(struct limit));
    if (r->limits == NULL) {
        Py_DECREF(l);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int res;
        unsigned long long soft, hard;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(l, i), "iKK", &res, &soft, &hard)) {
            Py_DECREF(l);
            return -1;
        }
        r->limits[i].resource = res;
        r->limits[i].value.rlim_cur = (rlim_t)soft;
        r->limits[i].value.rlim_max = (rlim_t)hard;
    }
    r->nlimits = (int)n;
    Py_DECREF(l);
    if (ready_o != Py_None && !PyArg_ParseTuple(ready_o, "ii", &r->ready_from, &r->ready_to))
        return -1;
    return 0;
}

static PyObject *spawn(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *path_o, *argv_o, *envp_o, *sigdef_o, *nofile_o, *setup_o = Py_None;
    PyObject *oom_o = Py_None;
    int out_fd, cg_fd;
    if (!PyArg_ParseTuple(args, "SOOiiOO|OO", &path_o, &argv_o, &envp_o, &out_fd, &cg_fd,
                          &sigdef_o, &nofile_o, &setup_o, &oom_o))
        return NULL;
#if !HAVE_CLONE3_ENTRY
    errno = ENOSYS;
    return PyErr_SetFromErrno(PyExc_OSError);
#else
    struct request r;
    memset(&r, 0, sizeof r);
    r.path = PyBytes_AS_STRING(path_o);
    r.out_fd = out_fd;
    r.umask = -1;
    r.gid = r.uid = -1;
    r.ready_from = r.ready_to = -1;
    r.bset = -1;
    r.join_fd = -1;
    if (oom_o != Py_None) {
        long v = PyLong_AsLong(oom_o);
        if (v == -1 && PyErr_Occurred())
            return NULL;
        if (v < -1000 || v > 1000) {
            PyErr_SetString(PyExc_ValueError, "oom must be from -1000 to 1000");
            return NULL;
        }
        r.oom_len = snprintf(r.oom, sizeof r.oom, "%ld", v);
    }
    if (setup_o != Py_None && parse_setup(setup_o, &r) < 0) {
        PyMem_Free(r.groups);
        PyMem_Free(r.limits);
        PyMem_Free(r.mounts);
        return NULL;
    }
    sigemptyset(&r.sigdef);
    PyObject *result = NULL, *argv = NULL, *envp = NULL;
    char **cargv = NULL, **cenvp = NULL;
    PyObject *sigdef = PySequence_Fast(sigdef_o, "sigdef must be a sequence");
    if (sigdef == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(sigdef); i++) {
        long s = PyLong_AsLong(PySequence_Fast_GET_ITEM(sigdef, i));
        if (s == -1 && PyErr_Occurred()) {
            Py_DECREF(sigdef);
            goto done;
        }
        sigaddset(&r.sigdef, (int)s);
    }
    Py_DECREF(sigdef);
    if (nofile_o != Py_None) {
        unsigned long long soft, hard;
        if (!PyArg_ParseTuple(nofile_o, "KK", &soft, &hard))
            goto done;
        r.has_nofile = 1;
        r.nofile.rlim_cur = (rlim_t)soft;
        r.nofile.rlim_max = (rlim_t)hard;
    }
    argv = PySequence_Fast(argv_o, "argv must be a sequence");
    if (argv == NULL)
        goto done;
    envp = PySequence_Fast(envp_o, "envp must be a sequence");
    if (envp == NULL)
        goto done;
    cargv = byte_array(argv, "argv");
    cenvp = cargv ? byte_array(envp, "envp") : NULL;
    if (cenvp && r.nlisten > 0 &&
        (r.listen_pid_at < 0 || r.listen_pid_at >= PySequence_Fast_GET_SIZE(envp))) {
        PyErr_SetString(PyExc_ValueError, "LISTEN_PID's slot is not in envp");
        PyMem_Free(cenvp);
        cenvp = NULL;
    }
    if (cargv && cenvp) {
        r.argv = cargv;
        r.envp = cenvp;
        struct clone_args_v2 a;
        memset(&a, 0, sizeof a);
        /* cgroup_fd -1: no cgroup (the restarter runs without them), the same child */
        a.flags = CLONE_VM | CLONE_VFORK | (cg_fd >= 0 ? CLONE_INTO_CGROUP : 0);
        /* (listen sockets: the child needs our whole table, so it gets a copy of it) */
        if (r.nlisten == 0 && reserve_slots() && dup3(out_fd, slot_out, O_CLOEXEC) >= 0 &&
            (r.ready_from < 0 || dup3(r.ready_from, slot_ready, O_CLOEXEC) >= 0)) {
            r.out_fd = slot_out;
            if (r.ready_from >= 0)
                r.ready_from = slot_ready;
            r.unshare_below = (slot_out > slot_ready ? slot_out : slot_ready) + 1;
            a.flags |= CLONE_FILES;
        }
        a.exit_signal = SIGCHLD;
        a.stack = (uint64_t)(uintptr_t)child_stack;
        a.stack_size = sizeof child_stack;
        a.cgroup = cg_fd >= 0 ? (uint64_t)cg_fd : 0;
        /* No signal handler may run in the child while it shares our memory: block all
         * (the child sets its own mask before exec). */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        long pid = clone3_call(&a, child_main, &r);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        last_oom_err = r.oom_err;
        if (slot_out >= 0) {  /* our copies of the service's pipes go (/dev/null again) */
            int e = errno;
            dup3(slot_null, slot_out, O_CLOEXEC);
            dup3(slot_null, slot_ready, O_CLOEXEC);
            errno = e;
        }
        /* STEPS: what a failed child's `step` names (100 + i: rlimits[i]) */
        static const char *steps[] = {"", "open /dev/null", "dup2", "setpgid",
                                      "setrlimit nofile", "exec", "chdir", "setgroups",
                                      "setresgid", "setresuid", "ready fd",
                                      "unshare descriptors", "oom_score_adj", "capset",
                                      "ambient", "no_new_privs", "mount namespace",
                                      "setpriority", "capability bounding set",
                                      "seccomp", "network namespace",
                                      "join namespaces", "sched_setscheduler",
                                      "ioprio_set", "sched_setaffinity", "tty",
                                      "listen sockets", "namespaces"};
        if (pid < 0) {
            errno = (int)-pid;
            PyErr_SetFromErrnoWithFilename(PyExc_OSError, "clone3");
        } else if (!r.entered) {
            /* Killed before it ran a single instruction of ours. Linux 6.18 does that to
             * every child cloned into a cgroup that was once cgroup.kill'ed: the child
             * is compared against the kill count of the parent's cgroup, not of its own
             * (kernel/cgroup/cgroup.c, cgroup_css_set_fork reads it before it knows the
             * target). The caller renews the cgroup or falls back. */
            int st;
            while (waitpid((pid_t)pid, &st, 0) < 0 && errno == EINTR)
                ;
            errno = ECANCELED;
            PyErr_SetFromErrnoWithFilename(PyExc_OSError, "clone3: killed at birth");
        } else if (r.step) {
            int st;
            while (waitpid((pid_t)pid, &st, 0) < 0 && errno == EINTR)
                ;
            char rl[32];
            errno = r.err;
            if (r.step >= 200) {
                snprintf(rl, sizeof rl, "mount %d", r.step - 200);
                PyErr_SetFromErrnoWithFilename(PyExc_OSError, rl);
            } else if (r.step >= 100) {
                snprintf(rl, sizeof rl, "rlimit %d", r.step - 100);
                PyErr_SetFromErrnoWithFilename(PyExc_OSError, rl);
            } else {
                PyErr_SetFromErrnoWithFilename(PyExc_OSError, steps[r.step]);
            }
        } else {
            result = PyLong_FromLong(pid);
        }
    }
done:
    PyMem_Free(cargv);
    PyMem_Free(cenvp);
    Py_XDECREF(argv);
    Py_XDECREF(envp);
    PyMem_Free(r.groups);
    PyMem_Free(r.limits);
    PyMem_Free(r.mounts);
    return result;
#endif
}

/* The restart after idle, before any Python runs (docs/restarter.md, "The compiled
 * restart"). After a quiet second every line of Python on the way from the wake-up to
 * clone3 runs cold (~200 us here); runsv does the same steps in C in a few. So the loop's
 * wait is this epoll_wait, and when the wake-up is a SIGCHLD whose exited child the
 * restarter armed (its policy restarts it at once whatever its exit, nothing else can
 * stand in the way: restarter/loop.py _arm), its replacement is cloned here, as the
 * Python path would have cloned it, before the events go back. Anything this cannot be
 * sure of (another child exited first, something waits on the notify socket, the
 * cgroup still holds a process or is frozen, the spawn fails) leaves it to Python. */
#define EXIT_MASK_BYTES ((256 + 128) / 8)  /* restarter/policy.py EXIT_MASK_BITS */
static struct epoll_event *wait_events;
static int wait_events_len;

static long long boottime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The armed replacement of the child that exited, or a new reference to None; NULL
 * with an exception only when the replacement started and its tuple cannot be made. */
static PyObject *restart_armed(PyObject *armed, int notify_fd, int spare_w, int yield_cpu) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) < 0 || si.si_pid <= 0)
        Py_RETURN_NONE;
    PyObject *key = PyLong_FromLong(si.si_pid);
    if (key == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *req = PyDict_GetItemWithError(armed, key);  /* borrowed */
    Py_DECREF(key);
    if (req == NULL || !PyTuple_Check(req) || PyTuple_GET_SIZE(req) != 3) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    int evfd = (int)PyLong_AsLong(PyTuple_GET_ITEM(req, 0));
    PyObject *sargs = PyTuple_GET_ITEM(req, 1);
    PyObject *mask = PyTuple_GET_ITEM(req, 2);
    if ((evfd == -1 && PyErr_Occurred()) || !PyTuple_Check(sargs) ||
            PyTuple_GET_SIZE(sargs) < 7 || !PyBytes_Check(mask) ||
            PyBytes_GET_SIZE(mask) != EXIT_MASK_BYTES) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    /* The exits the service's policy does not restart (restarter/policy.py exit_mask:
       bits 0-255 an exit code, 256 + n a signal) are Python's to handle. */
    int bit = si.si_code == CLD_EXITED ? (si.si_status & 255) : 256 + (si.si_status & 127);
    if (((const unsigned char *)PyBytes_AS_STRING(mask))[bit >> 3] & (1u << (bit & 7)))
        Py_RETURN_NONE;
    if (notify_fd >= 0) {  /* what the service sent before it ended is Python's to read */
        struct pollfd p = {.fd = notify_fd, .events = POLLIN};
        if (poll(&p, 1, 0) != 0)
            Py_RETURN_NONE;
    }
    char buf[257];
    ssize_t got = pread(evfd, buf, sizeof buf - 1, 0);
    if (got <= 0)
        Py_RETURN_NONE;
    buf[got] = 0;
    if (strstr(buf, "populated 1") != NULL || strstr(buf, "frozen 1") != NULL)
        Py_RETURN_NONE;  /* leftovers to kill, or a frozen cgroup: the Python path */
    Py_ssize_t n = PyTuple_GET_SIZE(sargs);
    PyObject *a = PyTuple_New(n);
    if (a == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = i == 3 ? PyLong_FromLong(spare_w) : PyTuple_GET_ITEM(sargs, i);
        if (v == NULL) {
            Py_DECREF(a);
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        if (i != 3)
            Py_INCREF(v);
        PyTuple_SET_ITEM(a, i, v);
    }
    long long born = boottime_ns();
    PyObject *pid = spawn(NULL, a);
    long long born_by = boottime_ns();
    Py_DECREF(a);
    if (pid == NULL) {  /* the Python path tries again and says why */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (yield_cpu)
        sched_yield();  /* as spawn.spawn: the replacement runs before the bookkeeping */
    /* (NULL only when that tuple cannot be made: the loop fails, and the standby's next
       restarter adopts the replacement from its cgroup) */
    return Py_BuildValue("(iiiLLN)", (int)si.si_pid, si.si_code, si.si_status, born,
                         born_by, pid);
}

/* The compiled beat (docs/restarter.md, "The compiled beat"). An idle restarter's only
 * work is its heartbeat, every heartbeat_interval; in Python, with its caches cold, that
 * costs ~350 us a beat, most of the chain's idle CPU. When nothing has happened since its
 * last beat, the loop hands its wait the record as written then, in pieces around the
 * three values that change from beat to beat (the beat's lateness as `lag`, `mono`,
 * `seq`), and the wait writes those beats itself on the grid while its epoll_wait times
 * out with nothing to do: no line of Python runs for them. Before each one it looks at
 * what the Python heartbeat would have looked at, and returns to Python instead of
 * writing when any of it moved: the heartbeat file was removed or replaced (link count
 * 0), a path the restarter keeps in state_dir is gone or another file (`kept`: path,
 * device, inode and, unless -1, the modification time in ns: a directory whose entries
 * did not change keeps its time, so one stat of state_dir stands for the paths in it;
 * device -2: only its existence, as lstat), a watched process ended (its
 * pidfd readable: init, the logger), the logger is stopped (its /proc/PID/stat state T
 * or t), or `until` (the next timer of any other kind, or anything else that would
 * change the record) is reached. */
#define BEAT_MAX_PIDFDS 8
#define BEAT_MAX_KEPT 16
struct beat_kept {
    const char *path;  /* borrowed from the caller's bytes, alive for the call */
    long long dev, ino, mtime;
};
struct beat_req {
    int fd;
    PyObject *pieces;  /* 4 bytes: before lag, before mono, before seq, after seq */
    long long seq, due, period, until, size;
    PyObject *pidfds, *kept, *crc32;
    int stat_fd;
    /* the same, as C values, for the looks made without the GIL (a stat of a hung
       mount holds this thread only, as the Python round's os.stat would) */
    int npidfds;
    int pidfd[BEAT_MAX_PIDFDS];
    int nkept;
    struct beat_kept kept_c[BEAT_MAX_KEPT];
};

static long long monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* 1 when nothing the Python heartbeat looks at has moved, else 0 (no Python object
 * touched: called without the GIL) */
static int beat_still(struct beat_req *b) {
    struct stat st;
    if (fstat(b->fd, &st) < 0 || st.st_nlink == 0)
        return 0;
    struct pollfd p[BEAT_MAX_PIDFDS];
    for (int i = 0; i < b->npidfds; i++) {
        p[i].fd = b->pidfd[i];
        p[i].events = POLLIN;
        p[i].revents = 0;
    }
    if (b->npidfds > 0 && poll(p, (nfds_t)b->npidfds, 0) != 0)
        return 0;
    if (b->stat_fd >= 0) {
        char buf[512];
        ssize_t got = pread(b->stat_fd, buf, sizeof buf - 1, 0);
        if (got <= 0)
            return 0;
        buf[got] = 0;
        char *paren = strrchr(buf, ')');
        if (paren == NULL || paren[1] == 0 || paren[2] == 'T' || paren[2] == 't' ||
                paren[2] == 'Z' || paren[2] == 'X')
            return 0;
    }
    for (int i = 0; i < b->nkept; i++) {
        const struct beat_kept *k = &b->kept_c[i];
        if (k->dev == -2) {
            if (lstat(k->path, &st) < 0)
                return 0;
        } else if (stat(k->path, &st) < 0 || (long long)st.st_dev != k->dev ||
                   (long long)st.st_ino != k->ino ||
                   (k->mtime >= 0 && (long long)st.st_mtim.tv_sec * 1000000000LL +
                    st.st_mtim.tv_nsec != k->mtime)) {
            return 0;
        }
    }
    return 1;
}

/* Write beat number `seq`, `lag_ns` late; 1 when written */
static int beat_write(struct beat_req *b, long long seq, long long now, long long lag_ns) {
    char nums[3][RECORD_NUM];
    int nlen[3];
    /* whole milliseconds, rounded up, as the Python beat's (loop.py _ms_up) */
    long long ms = lag_ns > 0 ? (lag_ns + 999999) / 1000000 : 0;
    nlen[0] = snprintf(nums[0], sizeof nums[0], "%lld.%03lld", ms / 1000, ms % 1000);
    nlen[1] = snprintf(nums[1], sizeof nums[1], "%lld.%09lld", now / 1000000000LL,
                       now % 1000000000LL);
    nlen[2] = snprintf(nums[2], sizeof nums[2], "%lld", seq);
    return record_write(b->fd, b->pieces, nums, nlen, 3, (Py_ssize_t)b->size, b->crc32);
}

static int beat_parse(PyObject *o, struct beat_req *b) {
    if (!PyArg_ParseTuple(o, "iO!LLLLLO!O!iO:beat", &b->fd, &PyTuple_Type, &b->pieces,
                          &b->seq, &b->due, &b->period, &b->until, &b->size,
                          &PyTuple_Type, &b->pidfds, &PyTuple_Type, &b->kept, &b->stat_fd,
                          &b->crc32))
        return -1;
    if (PyTuple_GET_SIZE(b->pieces) != 4 || b->period <= 0 || b->size <= 0) {
        PyErr_SetString(PyExc_ValueError, "beat: 4 pieces, a period and a size");
        return -1;
    }
    for (int i = 0; i < 4; i++)
        if (!PyBytes_Check(PyTuple_GET_ITEM(b->pieces, i))) {
            PyErr_SetString(PyExc_TypeError, "beat: the pieces are bytes");
            return -1;
        }
    Py_ssize_t n = PyTuple_GET_SIZE(b->pidfds);
    if (n > BEAT_MAX_PIDFDS) {
        PyErr_SetString(PyExc_ValueError, "beat: too many pidfds");
        return -1;
    }
    b->npidfds = (int)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        b->pidfd[i] = (int)PyLong_AsLong(PyTuple_GET_ITEM(b->pidfds, i));
        if (b->pidfd[i] < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "beat: a pidfd below 0");
            return -1;
        }
    }
    n = PyTuple_GET_SIZE(b->kept);
    if (n > BEAT_MAX_KEPT) {
        PyErr_SetString(PyExc_ValueError, "beat: too many kept paths");
        return -1;
    }
    b->nkept = (int)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = PyTuple_GET_ITEM(b->kept, i);
        struct beat_kept *c = &b->kept_c[i];
        if (!PyTuple_Check(k) || PyTuple_GET_SIZE(k) != 4 ||
                !PyBytes_Check(PyTuple_GET_ITEM(k, 0))) {
            PyErr_SetString(PyExc_TypeError, "beat: kept is (path bytes, dev, ino, mtime)");
            return -1;
        }
        c->path = PyBytes_AS_STRING(PyTuple_GET_ITEM(k, 0));
        c->dev = PyLong_AsLongLong(PyTuple_GET_ITEM(k, 1));
        c->ino = PyLong_AsLongLong(PyTuple_GET_ITEM(k, 2));
        c->mtime = PyLong_AsLongLong(PyTuple_GET_ITEM(k, 3));
        if (PyErr_Occurred())
            return -1;
    }
    return 0;
}

static PyObject *py_wait(PyObject *self, PyObject *args) {
    (void)self;
    int epfd, timeout_ms, maxevents, sigfd, notify_fd, spare_w, yield_cpu;
    PyObject *armed, *beat = Py_None;
    struct beat_req b;
    if (!PyArg_ParseTuple(args, "iiiiiOip|O:wait", &epfd, &timeout_ms, &maxevents, &sigfd,
                          &notify_fd, &armed, &spare_w, &yield_cpu, &beat))
        return NULL;
    int beating = beat != Py_None;
    if (beating && beat_parse(beat, &b) < 0)
        return NULL;
    long long beats = 0;
    if (maxevents < 1)
        maxevents = 1;
    if (maxevents > wait_events_len) {
        struct epoll_event *more = PyMem_Realloc(wait_events,
                                                 (size_t)maxevents * sizeof *more);
        if (more == NULL)
            return PyErr_NoMemory();
        wait_events = more;
        wait_events_len = maxevents;
    }
    int n;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        n = epoll_wait(epfd, wait_events, maxevents, timeout_ms);
        Py_END_ALLOW_THREADS
        if (n < 0) {
            if (errno != EINTR) {
                if (beats)  /* the beats written are told; the next wait meets it */
                    n = 0;
                else
                    return PyErr_SetFromErrno(PyExc_OSError);
                break;
            }
            if (!beats && PyErr_CheckSignals() < 0)  /* the handlers run (with beats */
                return NULL;  /* written: as the loop goes on); the loop comes round again */
            n = 0;
            break;
        }
        if (n > 0 || !beating)
            break;
        long long now = monotonic_ns();
        if (now < b.due) {  /* woken before the beat (the ms rounded down): wait on */
            timeout_ms = (int)((b.due - now + 999999) / 1000000);
            continue;
        }
        if (b.due >= b.until)
            break;
        int still;
        Py_BEGIN_ALLOW_THREADS
        still = beat_still(&b);
        Py_END_ALLOW_THREADS
        if (!still || !beat_write(&b, b.seq + beats + 1, now, now - b.due))
            break;
        beats++;
        /* the next point of the grid after now (channels.next_tick) */
        b.due += ((now - b.due) / b.period + 1) * b.period;
        if (b.due >= b.until)
            break;
        timeout_ms = (int)((b.due - now + 999999) / 1000000);
    }
    PyObject *fast = NULL;
    if (PyDict_Check(armed) && PyDict_GET_SIZE(armed) > 0 && spare_w >= 0) {
        for (int i = 0; i < n; i++) {
            if (wait_events[i].data.fd == sigfd) {
                fast = restart_armed(armed, notify_fd, spare_w, yield_cpu);
                if (fast == NULL)
                    return NULL;
                break;
            }
        }
    }
    if (fast == NULL) {
        fast = Py_None;
        Py_INCREF(fast);
    }
    PyObject *evs = PyList_New(n);
    for (int i = 0; evs != NULL && i < n; i++) {
        PyObject *t = Py_BuildValue("(iI)", wait_events[i].data.fd, wait_events[i].events);
        if (t == NULL)
            Py_CLEAR(evs);
        else
            PyList_SET_ITEM(evs, i, t);
    }
    if (evs == NULL) {
        Py_DECREF(fast);
        return NULL;
    }
    return Py_BuildValue("(NNLL)", evs, fast, beats, beating ? b.due : 0LL);
}

static PyObject *py_last_oom_error(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyLong_FromLong(last_oom_err);
}

static PyObject *py_reserve(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    if (!reserve_slots())
        Py_RETURN_NONE;
    return Py_BuildValue("(ii)", slot_out, slot_ready);
}

/* getgrouplist(3) without the GIL: os.getgrouplist holds it, so a name service that
   does not answer (an LDAP server gone, a hung NFS /etc) would stop every thread of the
   restarter, and the resolver thread that asks it (spawn.py, Resolver) would keep
   nothing from hanging. */
static PyObject *py_getgrouplist(PyObject *self, PyObject *args) {
    (void)self;
    const char *user;
    unsigned int gid;
    if (!PyArg_ParseTuple(args, "sI:getgrouplist", &user, &gid))
        return NULL;
    int n = 64;
    gid_t *groups = NULL;
    for (;;) {
        gid_t *more = PyMem_RawRealloc(groups, (size_t)n * sizeof(gid_t));
        if (more == NULL) {
            PyMem_RawFree(groups);
            return PyErr_NoMemory();
        }
        groups = more;
        int got = n, r;
        Py_BEGIN_ALLOW_THREADS
        r = getgrouplist(user, (gid_t)gid, groups, &got);
        Py_END_ALLOW_THREADS
        if (r >= 0) {
            n = r;
            break;
        }
        if (got <= n) {
            if (n >= 65536) {
                PyMem_RawFree(groups);
                errno = EINVAL;
                return PyErr_SetFromErrno(PyExc_OSError);
            }
            n *= 2;
        } else {
            n = got;
        }
    }
    PyObject *out = PyList_New(n);
    for (int i = 0; out != NULL && i < n; i++) {
        PyObject *v = PyLong_FromUnsignedLong(groups[i]);
        if (v == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, v);
    }
    PyMem_RawFree(groups);
    return out;
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS, spawn_doc},
    {"wait", py_wait, METH_VARARGS,
     "wait(epfd, timeout_ms, maxevents, sigchld_fd, notify_fd, armed, spare_w, yield_cpu)\n"
     "-> ([(fd, events)...], restarted)\n\nepoll_wait on `epfd`; when `sigchld_fd` is "
     "among the events and the child that exited is a key of `armed` (pid -> (its "
     "cgroup.events fd, spawn()'s arguments, a mask of the exits left to Python: "
     "policy.exit_mask)), its exit is not in that mask, its cgroup read empty and not "
     "frozen and nothing waits on `notify_fd`, the replacement is started with `spare_w` as its "
     "output: restarted is then (pid, si_code, si_status, boottime before, boottime "
     "after, new pid), else None. The child that exited is left a zombie.\n\n"
     "wait(..., beat) -> ([(fd, events)...], restarted, beats, due_ns)\n\nWith `beat` (hb_fd, "
     "(4 pieces), seq, due_ns, period_ns, until_ns, size, (pidfd...), ((path, dev, "
     "ino, mtime_ns)...), stat_fd, crc32), a wait that times out at `due_ns` (CLOCK_MONOTONIC) "
     "writes heartbeat seq+1 itself (the pieces around lag, mono and seq, with its CRC, "
     "padded to size) and waits on for the next point of the grid, until `until_ns` or "
     "anything the heartbeat looks at moved; beats: how many it wrote, due_ns: when the "
     "next one is due (0 without `beat`)."},
    {"getgrouplist", py_getgrouplist, METH_VARARGS,
     "getgrouplist(user, gid) -> [gid, ...]\n\nos.getgrouplist, without holding the GIL "
     "while the name service answers."},
    {"last_oom_error", py_last_oom_error, METH_NOARGS,
     "last_oom_error() -> errno\n\nThe error of the last spawn's oom_score_adj write (0: "
     "written, or none asked for): a refused one is not a failed start."},
    {"reserve", py_reserve, METH_NOARGS,
     "reserve() -> (out, ready) | None\n\nReserve the two low descriptors spawn() hands "
     "the child its output and readiness descriptors in, so that the child copies only the "
     "descriptors below them (see SLOTS in _clone3.c); None where the kernel lacks "
     "close_range(CLOSE_RANGE_UNSHARE) (then every spawn copies the whole table). Call it "
     "early: the first spawn reserves them otherwise, wherever the lowest free ones are."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_clone3",
    "Start a process straight into a cgroup (clone3 CLONE_INTO_CGROUP); see spawn.py.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__clone3(void) {
    PyObject *m = PyModule_Create(&module);
    /* ABI: the calling convention of spawn(); spawn.py uses the module only when it
       matches (an editable install keeps an old build until pip builds it again). */
    if (m != NULL && (PyModule_AddIntConstant(m, "AVAILABLE", HAVE_CLONE3_ENTRY) < 0 ||
                      PyModule_AddIntConstant(m, "ABI", 21) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
