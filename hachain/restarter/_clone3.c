/* hachain.restarter._clone3: start a service process straight into its cgroup.
 *
 * One function, spawn(), does what os.posix_spawn does for the restarter's plain services
 * (stdin from /dev/null, stdout and stderr to one descriptor, a process group of its own,
 * default signal dispositions, an empty signal mask), with one difference: the child is
 * created inside the service's cgroup by clone3(CLONE_INTO_CGROUP) (Linux 5.7).
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
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
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

struct request {
    const char *path;
    char *const *argv;
    char *const *envp;
    int out_fd;
    int has_nofile;
    struct rlimit nofile;
    sigset_t sigdef;
    volatile int entered;  /* set by the child first thing: it ran at all */
    volatile int err;   /* written by the child when a step fails */
    volatile int step;  /* which step: 1 open /dev/null, 2 dup2, 3 setpgid, 4 rlimit, 5 exec */
};

/* The child's stack. The GIL is held for the whole call and the parent sleeps until the
 * child has exec'd, so one stack serves every spawn. */
static char child_stack[64 * 1024] __attribute__((aligned(16)));

static int fail(struct request *r, int step) {
    r->err = errno;
    r->step = step;
    return 127;
}

static int to_fd(int from, int to) {
    if (from == to)  /* dup2 would keep close-on-exec */
        return fcntl(to, F_SETFD, 0);
    return dup2(from, to);
}

/* The child: runs on child_stack, in the parent's memory, until execve. */
static int child_main(void *arg) {
    struct request *r = arg;
    struct sigaction dfl, cur;
    sigset_t none;
    r->entered = 1;
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
    if (setpgid(0, 0) < 0)
        return fail(r, 3);
    if (r->has_nofile && setrlimit(RLIMIT_NOFILE, &r->nofile) < 0)
        return fail(r, 4);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
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
"spawn(path, argv, envp, out_fd, cgroup_fd, sigdef, nofile) -> pid\n\n"
"Start `path` with `argv` and `envp` (sequences of bytes) in the cgroup whose directory\n"
"`cgroup_fd` is open, stdin /dev/null, stdout and stderr `out_fd`, its own process\n"
"group, the signals in `sigdef` (and any with a handler) at their default, an empty\n"
"signal mask, and RLIMIT_NOFILE `nofile` ((soft, hard) or None). Returns once the child\n"
"has exec'd. OSError when clone3 fails (ENOSYS, EINVAL, E2BIG: the kernel cannot;\n"
"the caller falls back), when the child was killed before it ran (filename\n"
"'clone3: killed at birth'), or when a step in the child fails; a failed child is\n"
"reaped here. The error's `filename` is the step: 'exec', 'setpgid', ...");

static PyObject *spawn(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *path_o, *argv_o, *envp_o, *sigdef_o, *nofile_o;
    int out_fd, cg_fd;
    if (!PyArg_ParseTuple(args, "SOOiiOO", &path_o, &argv_o, &envp_o, &out_fd, &cg_fd,
                          &sigdef_o, &nofile_o))
        return NULL;
#if !HAVE_CLONE3_ENTRY
    errno = ENOSYS;
    return PyErr_SetFromErrno(PyExc_OSError);
#else
    struct request r;
    memset(&r, 0, sizeof r);
    r.path = PyBytes_AS_STRING(path_o);
    r.out_fd = out_fd;
    sigemptyset(&r.sigdef);
    PyObject *sigdef = PySequence_Fast(sigdef_o, "sigdef must be a sequence");
    if (sigdef == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(sigdef); i++) {
        long s = PyLong_AsLong(PySequence_Fast_GET_ITEM(sigdef, i));
        if (s == -1 && PyErr_Occurred()) {
            Py_DECREF(sigdef);
            return NULL;
        }
        sigaddset(&r.sigdef, (int)s);
    }
    Py_DECREF(sigdef);
    if (nofile_o != Py_None) {
        unsigned long long soft, hard;
        if (!PyArg_ParseTuple(nofile_o, "KK", &soft, &hard))
            return NULL;
        r.has_nofile = 1;
        r.nofile.rlim_cur = (rlim_t)soft;
        r.nofile.rlim_max = (rlim_t)hard;
    }
    PyObject *argv = PySequence_Fast(argv_o, "argv must be a sequence");
    if (argv == NULL)
        return NULL;
    PyObject *envp = PySequence_Fast(envp_o, "envp must be a sequence");
    if (envp == NULL) {
        Py_DECREF(argv);
        return NULL;
    }
    char **cargv = byte_array(argv, "argv");
    char **cenvp = cargv ? byte_array(envp, "envp") : NULL;
    PyObject *result = NULL;
    if (cargv && cenvp) {
        r.argv = cargv;
        r.envp = cenvp;
        struct clone_args_v2 a;
        memset(&a, 0, sizeof a);
        a.flags = CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP;
        a.exit_signal = SIGCHLD;
        a.stack = (uint64_t)(uintptr_t)child_stack;
        a.stack_size = sizeof child_stack;
        a.cgroup = (uint64_t)cg_fd;
        /* No signal handler may run in the child while it shares our memory: block all
         * (the child sets its own mask before exec). */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        long pid = clone3_call(&a, child_main, &r);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        static const char *steps[] = {"", "open /dev/null", "dup2", "setpgid",
                                      "setrlimit nofile", "exec"};
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
            errno = r.err;
            PyErr_SetFromErrnoWithFilename(PyExc_OSError, steps[r.step]);
        } else {
            result = PyLong_FromLong(pid);
        }
    }
    PyMem_Free(cargv);
    PyMem_Free(cenvp);
    Py_DECREF(argv);
    Py_DECREF(envp);
    return result;
#endif
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS, spawn_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_clone3",
    "Start a process straight into a cgroup (clone3 CLONE_INTO_CGROUP); see spawn.py.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__clone3(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "AVAILABLE", HAVE_CLONE3_ENTRY) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
