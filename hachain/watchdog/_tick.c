/* hachain.watchdog._tick: the tickler's compiled tick (docs/tickler.md, "The compiled
 * tick"). Optional: without it the tickler ticks in Python only, as it always could.
 *
 * An idle chain's tickler does the same thing at every tick: it reads init's and the
 * restarter's heartbeats, finds them fresh and otherwise as they were, pets the device
 * and writes its own heartbeat. In Python, with every cache cold after two seconds of
 * sleep, that costs ~400 us a tick, half of the chain's idle CPU. Once a Python tick has
 * passed the gate, the tickler hands its reader thread `run()`, which does the following
 * ticks itself as long as nothing changes what the gate would say, and hands the round
 * back to Python (without acting on it) as soon as anything might:
 *
 * - each heartbeat file must still be the file the Python reader has open (a stat of its
 *   path: device and inode), and its record the one the gate last passed, byte for byte,
 *   but for the values of its "slots": the CRC (which must match), `mono` (which must be
 *   fresh: within heartbeat_timeout of now, either way), `seq`, the restarter's `lag`
 *   (at most max_loop_lag) and numbers no rule reads (`timer_lag`);
 * - init's pidfd and each gated layer's pidfd must not be readable (nobody ended);
 * - nobody cancelled the run: the loop thread, whenever it takes the tickler's lock,
 *   takes the run's state over (Tickler._absorb) and sets CANCEL, so from then on the run
 *   acts no more; the decisions and the pet are made under that same lock.
 *
 * Then it pets the device when a pet is due (WDIOC_KEEPALIVE on a kernel's device; the
 * Watchdog's own keepalive on the simulator's, with the GIL), writes the tickler's
 * heartbeat from the pieces of the last one Python wrote (the values that change at every
 * tick formatted here, its CRC through zlib.crc32), and moves the interval timer the loop
 * thread sleeps on past the next tick, as the Python tick does. What the run did is kept
 * in `state`, an array of int64 the tickler reads (the indices: STATE).
 *
 * The file reads are made without the GIL and without the lock: a read that hangs holds
 * this thread only, as in Python, and the loop thread, woken by the interval timer, fails
 * the gate on it (BUSY_SINCE says since when). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "../_record.h"

/* The state's indices; their names go to Python as STATE, in this order. Times are
 * CLOCK_MONOTONIC in ns; -1 stands for None where a value may be missing. */
enum {
    S_CANCEL,            /* set by the tickler: act no more */
    S_ANSWERED,          /* rounds read (the reader's `answered`), counted per tick here */
    S_BUSY_SINCE,        /* the round being read began then (-1: none) */
    S_LAYER,             /* which layer's file is being read */
    S_DUE,               /* the next round/tick */
    S_UNTIL,             /* a round due at or after this is Python's */
    S_PERIOD, S_OFFSET,  /* the ticks' grid (channels.next_tick) */
    S_READ_DEADLINE, S_HB_TIMEOUT, S_MAX_LAG,
    S_PET_INTERVAL, S_PET_EARLY, S_PET_GRACE, S_ALARM_MIN,
    S_NEXT_PET, S_PET_DUE, S_LAST_PET, S_PET_INTERVAL_LAST, S_PETS,
    S_WORST, S_LATE_WARN, S_LATENESS,  /* a pet later than WORST or LATE_WARN ends the run
                                          after its tick; LATENESS: the last pet's (-1) */
    S_HB_SEQ, S_TICKS,   /* the tickler's heartbeat seq; compiled ticks (from Python's
                            count: the heartbeat says it) */
    S_MONO0, S_SEQ0, S_LAG0,  /* per layer, from its last record: mono, seq, lag (-1) */
    S_MONO1, S_SEQ1, S_LAG1,
    S_LEN
};
static const char *const state_names[S_LEN] = {
    "CANCEL", "ANSWERED", "BUSY_SINCE", "LAYER", "DUE", "UNTIL", "PERIOD", "OFFSET",
    "READ_DEADLINE", "HB_TIMEOUT", "MAX_LAG", "PET_INTERVAL", "PET_EARLY", "PET_GRACE",
    "ALARM_MIN", "NEXT_PET", "PET_DUE", "LAST_PET", "PET_INTERVAL_LAST", "PETS", "WORST",
    "LATE_WARN", "LATENESS", "HB_SEQ", "TICKS", "MONO0", "SEQ0", "LAG0", "MONO1", "SEQ1",
    "LAG1",
};
#define PER_LAYER 3
#define MAX_LAYERS 2

/* A record's slots (channels.SLOT_KINDS, in this order) */
enum { SLOT_CRC, SLOT_MONO, SLOT_SEQ, SLOT_LAG, SLOT_NUMBER, SLOT_KINDS };
static const char *const slot_names[SLOT_KINDS] = {"crc", "mono", "seq", "lag", "number"};
#define MAX_SLOTS 8

/* What run() returns */
enum { RET_ROUND, RET_TICKED };

struct layer {
    const char *path;
    int fd, pidfd;
    long long dev, ino;
    Py_ssize_t cap;
    PyObject *consts;  /* bytes between the slots: nslots + 1 */
    int nslots;
    int kind[MAX_SLOTS];
    char *buf;
    Py_ssize_t got;
};

static long long mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* channels.next_tick on ns */
static long long next_grid(long long now, long long period, long long offset) {
    long long k = (now - offset) / period;
    if (now - offset < 0 && (now - offset) % period)
        k -= 1;
    long long t = offset + (k + 1) * period;
    return t > now ? t : t + period;
}

/* A JSON number at p (up to end): its length, and its value in ns (seconds with up to
 * nine decimals; more are cut) or as an integer; 0 when it is none of those. */
static Py_ssize_t parse_number(const char *p, const char *end, int integer, long long *out) {
    const char *q = p;
    int neg = 0;
    if (q < end && *q == '-') {
        neg = 1;
        q++;
    }
    long long whole = 0, frac = 0;
    int digits = 0, fd = 0;
    while (q < end && *q >= '0' && *q <= '9') {
        if (whole > 922337203LL)  /* past int64 ns */
            return 0;
        whole = whole * 10 + (*q++ - '0');
        digits++;
    }
    if (!digits)
        return 0;
    if (q < end && *q == '.') {
        if (integer)
            return 0;
        q++;
        while (q < end && *q >= '0' && *q <= '9') {
            if (fd < 9) {
                frac = frac * 10 + (*q - '0');
                fd++;
            }
            q++;
        }
        if (!fd)
            return 0;
    }
    if (q < end && (*q == 'e' || *q == 'E'))
        return 0;  /* never written for these; Python judges it */
    while (fd < 9 && !integer) {
        frac *= 10;
        fd++;
    }
    long long v = integer ? whole : whole * 1000000000LL + frac;
    *out = neg ? -v : v;
    return q - p;
}

/* The record in l->buf against its template: 1 when it matches, with the slots' values
 * in `mono`, `seq` and `lag` (-1 when the record has none) and the CRC checked. */
static int match(struct layer *l, PyObject *crc32, long long *mono, long long *seq,
                 long long *lag) {
    const char *p = l->buf, *end = l->buf + l->got;
    long long crc = -1;
    *mono = *seq = *lag = -1;
    int have_mono = 0, have_seq = 0;
    for (int i = 0; i <= l->nslots; i++) {
        PyObject *c = PyTuple_GET_ITEM(l->consts, i);
        Py_ssize_t n = PyBytes_GET_SIZE(c);
        if (end - p < n || memcmp(p, PyBytes_AS_STRING(c), (size_t)n) != 0)
            return 0;
        p += n;
        if (i == l->nslots)
            break;
        long long v;
        Py_ssize_t len;
        switch (l->kind[i]) {
        case SLOT_CRC:
            if (end - p < 8)
                return 0;
            crc = 0;
            for (int k = 0; k < 8; k++) {
                char h = p[k];
                int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : -1;
                if (d < 0)
                    return 0;
                crc = crc * 16 + d;
            }
            p += 8;
            break;
        case SLOT_SEQ:
            if (!(len = parse_number(p, end, 1, &v)))
                return 0;
            *seq = v;
            have_seq = 1;
            p += len;
            break;
        default:
            if (!(len = parse_number(p, end, 0, &v)))
                return 0;
            if (l->kind[i] == SLOT_MONO) {
                *mono = v;
                have_mono = 1;
            } else if (l->kind[i] == SLOT_LAG) {
                *lag = v;
            }
            p += len;
        }
    }
    /* the template's last piece ends with the record's newline */
    if (crc < 0 || !have_mono || !have_seq || p == l->buf || p[-1] != '\n')
        return 0;
    const Py_ssize_t body = 20;  /* {"crc": "xxxxxxxx", */
    if (p - l->buf - 1 < body)
        return 0;
    PyObject *got = PyObject_CallFunction(crc32, "y#", l->buf + body,
                                          (Py_ssize_t)(p - l->buf - 1 - body));
    if (got == NULL) {
        PyErr_Clear();
        return 0;
    }
    unsigned long c = PyLong_AsUnsignedLong(got);
    Py_DECREF(got);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return (long long)(c & 0xffffffffUL) == crc;
}

/* seconds from ns, or null */
static int fmt_seconds(char *out, size_t size, long long ns) {
    if (ns < 0)
        return snprintf(out, size, "null");
    return snprintf(out, size, "%lld.%09lld", ns / 1000000000LL, ns % 1000000000LL);
}

/* The tickler's heartbeat: the pieces around compiled_ticks, last_pet_mono,
 * pet_interval_last, pets, timeleft, mono and seq (Tickler.COMPILED_KEYS, then the
 * record's own), padded to `size`. 1 when written. */
#define NUMS 7  /* the values write_beat fills in; the pieces are one more */
static int write_beat(int fd, PyObject *pieces, Py_ssize_t size, PyObject *crc32,
                      long long *st, long long timeleft, long long now) {
    struct stat sb;
    if (fstat(fd, &sb) < 0 || sb.st_nlink == 0)
        return 0;  /* removed or replaced: the Python beat makes a new file */
    char nums[NUMS][RECORD_NUM];
    int nlen[NUMS];
    nlen[0] = snprintf(nums[0], sizeof nums[0], "%lld", st[S_TICKS]);
    nlen[1] = fmt_seconds(nums[1], sizeof nums[1], st[S_LAST_PET]);
    nlen[2] = fmt_seconds(nums[2], sizeof nums[2], st[S_PET_INTERVAL_LAST]);
    nlen[3] = snprintf(nums[3], sizeof nums[3], "%lld", st[S_PETS]);
    nlen[4] = timeleft < 0 ? snprintf(nums[4], sizeof nums[4], "null")
                           : snprintf(nums[4], sizeof nums[4], "%lld", timeleft);
    nlen[5] = fmt_seconds(nums[5], sizeof nums[5], now);
    nlen[6] = snprintf(nums[6], sizeof nums[6], "%lld", st[S_HB_SEQ] + 1);
    if (!record_write(fd, pieces, nums, nlen, NUMS, size, crc32))
        return 0;
    st[S_HB_SEQ] += 1;
    return 1;
}

static int layers_parse(PyObject *layers, struct layer *L, int *n) {
    if (!PyTuple_Check(layers) || PyTuple_GET_SIZE(layers) < 1 ||
            PyTuple_GET_SIZE(layers) > MAX_LAYERS) {
        PyErr_SetString(PyExc_ValueError, "run: one or two layers");
        return -1;
    }
    *n = (int)PyTuple_GET_SIZE(layers);
    for (int i = 0; i < *n; i++) {
        struct layer *l = &L[i];
        PyObject *kinds;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(layers, i), "yiiLLnO!O!:layer", &l->path,
                              &l->fd, &l->pidfd, &l->dev, &l->ino, &l->cap, &PyTuple_Type,
                              &l->consts, &PyTuple_Type, &kinds))
            return -1;
        Py_ssize_t k = PyTuple_GET_SIZE(kinds);
        if (k < 1 || k > MAX_SLOTS || PyTuple_GET_SIZE(l->consts) != k + 1 || l->cap < 64 ||
                l->fd < 0 || l->pidfd < 0) {
            PyErr_SetString(PyExc_ValueError, "run: a layer's template is malformed");
            return -1;
        }
        l->nslots = (int)k;
        for (Py_ssize_t j = 0; j < k; j++) {
            long kind = PyLong_AsLong(PyTuple_GET_ITEM(kinds, j));
            if (kind < 0 || kind >= SLOT_KINDS) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "run: an unknown slot kind");
                return -1;
            }
            l->kind[j] = (int)kind;
        }
        for (Py_ssize_t j = 0; j <= k; j++)
            if (!PyBytes_Check(PyTuple_GET_ITEM(l->consts, j))) {
                PyErr_SetString(PyExc_TypeError, "run: a template's pieces are bytes");
                return -1;
            }
    }
    return 0;
}

/* Sleep until `at` without the GIL; 0 once there */
static void sleep_until(long long at) {
    struct timespec ts = {(time_t)(at / 1000000000LL), (long)(at % 1000000000LL)};
    Py_BEGIN_ALLOW_THREADS
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
    Py_END_ALLOW_THREADS
}

/* Read each layer's file into its buffer, without the GIL; 1 when every path still
 * names the open file and every read took a whole record. */
static int read_round(long long *st, struct layer *L, int n) {
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; ok && i < n; i++) {
        struct layer *l = &L[i];
        struct stat sb;
        st[S_LAYER] = i;
        if (stat(l->path, &sb) < 0 || (long long)sb.st_dev != l->dev ||
                (long long)sb.st_ino != l->ino) {
            ok = 0;
            break;
        }
        ssize_t got = pread(l->fd, l->buf, (size_t)l->cap, 0);
        if (got <= 0 || got >= l->cap)
            ok = 0;
        else
            l->got = got;
    }
    Py_END_ALLOW_THREADS
    return ok;
}

static int lock_call(PyObject *lock, const char *what) {
    PyObject *r = PyObject_CallMethod(lock, what, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* One tick under the lock, the round read: 1 when ticked, 0 when the round is Python's,
 * -1 on an error (raised). `*end`: the run ends after this tick. */
struct device {
    int fd;  /* a device of the kernel's: its ioctls are made here */
    unsigned long keepalive, timeleft;
    PyObject *pet, *left;  /* else (the simulator's), the Watchdog's methods, or None */
};

static int tick(long long *st, struct layer *L, int n, int init_pidfd,
                const struct device *wd, int hb_fd, PyObject *pieces, Py_ssize_t hb_size,
                PyObject *crc32, int *end) {
    int have_wd = wd->fd >= 0 || wd->pet != Py_None;
    struct pollfd p[MAX_LAYERS + 1];
    int np = 0;
    for (int i = 0; i < n; i++)
        p[np++] = (struct pollfd){.fd = L[i].pidfd, .events = POLLIN};
    if (init_pidfd >= 0)
        p[np++] = (struct pollfd){.fd = init_pidfd, .events = POLLIN};
    if (poll(p, (nfds_t)np, 0) != 0)
        return 0;  /* someone ended (or poll failed): Python's tick says what */
    long long now = mono_ns();
    long long mono[MAX_LAYERS], seq[MAX_LAYERS], lag[MAX_LAYERS];
    for (int i = 0; i < n; i++) {
        if (!match(&L[i], crc32, &mono[i], &seq[i], &lag[i]))
            return 0;
        /* as health.layer_reasons: neither from the future nor stale */
        if (mono[i] - now > st[S_HB_TIMEOUT] || now - mono[i] > st[S_HB_TIMEOUT])
            return 0;
        if (lag[i] > st[S_MAX_LAG])
            return 0;  /* health.restarter_reasons weighs it with the progress */
    }
    if (have_wd && now + st[S_PET_EARLY] >= st[S_NEXT_PET]) {
        int rc = 0;
        if (wd->fd >= 0) {
            int arg = 0;
            Py_BEGIN_ALLOW_THREADS
            rc = ioctl(wd->fd, wd->keepalive, &arg);
            Py_END_ALLOW_THREADS
        } else {
            PyObject *r = PyObject_CallNoArgs(wd->pet);
            if (r == NULL) {
                PyErr_Clear();
                rc = -1;
            }
            Py_XDECREF(r);
        }
        if (rc < 0)
            return 0;  /* Python's tick pets again, and fails as it must */
        long long t = mono_ns();
        st[S_LATENESS] = -1;
        if (st[S_PET_DUE] >= 0 && st[S_LAST_PET] >= 0) {
            long long late = t - st[S_PET_DUE];
            st[S_LATENESS] = late > 0 ? late : 0;
            st[S_PET_INTERVAL_LAST] = t - st[S_LAST_PET];
            if (st[S_LATENESS] > st[S_WORST] || st[S_LATENESS] > st[S_LATE_WARN])
                *end = 1;  /* Python records it (and warns) */
        }
        st[S_PETS] += 1;
        st[S_LAST_PET] = t;
        st[S_PET_DUE] = st[S_NEXT_PET] = next_grid(now + st[S_PET_EARLY], st[S_PET_INTERVAL],
                                                   st[S_OFFSET]);
    }
    long long left = -1;  /* as the Python beat: null when the driver cannot tell */
    if (wd->fd >= 0 && wd->timeleft) {
        int arg = 0;
        if (ioctl(wd->fd, wd->timeleft, &arg) == 0)
            left = arg;
    } else if (wd->fd < 0 && wd->left != Py_None) {
        PyObject *r = PyObject_CallNoArgs(wd->left);
        if (r == NULL)
            PyErr_Clear();
        else if (PyLong_Check(r))
            left = PyLong_AsLongLong(r);
        Py_XDECREF(r);
        if (PyErr_Occurred()) {
            PyErr_Clear();
            left = -1;
        }
    }
    for (int i = 0; i < n; i++) {
        st[S_MONO0 + PER_LAYER * i] = mono[i];
        st[S_SEQ0 + PER_LAYER * i] = seq[i];
        st[S_LAG0 + PER_LAYER * i] = lag[i];
    }
    st[S_ANSWERED] += 1;
    st[S_TICKS] += 1;
    if (!write_beat(hb_fd, pieces, hb_size, crc32, st, left, now))
        *end = 1;  /* Python's beat writes it (a new file, a bigger one) */
    long long next = next_grid(now, st[S_PERIOD], st[S_OFFSET]);
    st[S_DUE] = next_grid(mono_ns(), st[S_PERIOD], st[S_OFFSET]);
    /* the loop thread's interval timer, as Tickler._next_wake: a round read_deadline late
     * (or the pet PET_GRACE after it); a pet due between ticks is the loop's */
    long long wake = next + st[S_READ_DEADLINE];
    if (have_wd) {
        if (st[S_NEXT_PET] + st[S_PET_EARLY] < next)
            *end = 1;
        else if (st[S_NEXT_PET] + st[S_PET_GRACE] < wake)
            wake = st[S_NEXT_PET] + st[S_PET_GRACE];
    }
    long long in = wake - mono_ns();
    if (in < st[S_ALARM_MIN])
        in = st[S_ALARM_MIN];
    struct itimerval it = {{0, 0}, {(time_t)(in / 1000000000LL),
                                     (suseconds_t)((in % 1000000000LL) / 1000)}};
    if (it.it_value.tv_sec == 0 && it.it_value.tv_usec == 0)
        it.it_value.tv_usec = 1;
    setitimer(ITIMER_REAL, &it, NULL);
    return 1;
}

static PyObject *py_run(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *state_obj, *layers, *pieces, *lock, *crc32;
    int init_pidfd, hb_fd;
    struct device wd;
    Py_ssize_t hb_size;
    if (!PyArg_ParseTuple(args, "OO(ikkOO)iiO!nOO:run", &state_obj, &layers, &wd.fd,
                          &wd.keepalive, &wd.timeleft, &wd.pet, &wd.left, &init_pidfd, &hb_fd,
                          &PyTuple_Type, &pieces, &hb_size, &lock, &crc32))
        return NULL;
    if ((wd.pet != Py_None && !PyCallable_Check(wd.pet)) ||
            (wd.left != Py_None && !PyCallable_Check(wd.left))) {
        PyErr_SetString(PyExc_TypeError, "run: the device's pet and timeleft are callables");
        return NULL;
    }
    if (PyTuple_GET_SIZE(pieces) != NUMS + 1 || hb_fd < 0 || hb_size <= 0) {
        PyErr_SetString(PyExc_ValueError, "run: 8 pieces, a heartbeat fd and its size");
        return NULL;
    }
    for (int i = 0; i <= NUMS; i++)
        if (!PyBytes_Check(PyTuple_GET_ITEM(pieces, i))) {
            PyErr_SetString(PyExc_TypeError, "run: the pieces are bytes");
            return NULL;
        }
    struct layer L[MAX_LAYERS];
    memset(L, 0, sizeof L);
    int n = 0;
    if (layers_parse(layers, L, &n) < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(state_obj, &view, PyBUF_WRITABLE | PyBUF_FORMAT) < 0)
        return NULL;
    PyObject *ret = NULL;
    if (view.len != (Py_ssize_t)(S_LEN * sizeof(long long)) || view.itemsize != 8 ||
            view.format == NULL || strcmp(view.format, "q") != 0) {
        PyErr_SetString(PyExc_ValueError, "run: state is an array('q') of len(STATE)");
        goto done;
    }
    long long *st = view.buf;
    if (st[S_PERIOD] <= 0 || st[S_PET_INTERVAL] <= 0) {
        PyErr_SetString(PyExc_ValueError, "run: a period and a pet interval above 0");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        L[i].buf = PyMem_Malloc((size_t)L[i].cap);
        if (L[i].buf == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    int result = RET_ROUND;
    for (;;) {
        if (st[S_CANCEL])
            break;
        long long now = mono_ns();
        if (now < st[S_DUE]) {
            sleep_until(st[S_DUE]);
            continue;
        }
        if (st[S_DUE] >= st[S_UNTIL])
            break;
        st[S_BUSY_SINCE] = now;
        int read = read_round(st, L, n);
        st[S_BUSY_SINCE] = -1;
        if (!read)
            break;
        if (lock_call(lock, "acquire") < 0)
            goto done;
        int end = 0, ticked = 0;
        if (!st[S_CANCEL])
            ticked = tick(st, L, n, init_pidfd, &wd, hb_fd, pieces, hb_size, crc32, &end);
        if (lock_call(lock, "release") < 0)
            goto done;
        if (!ticked)
            break;
        if (end) {
            result = RET_TICKED;
            break;
        }
    }
    ret = PyLong_FromLong(result);
done:
    for (int i = 0; i < n; i++)
        PyMem_Free(L[i].buf);
    PyBuffer_Release(&view);
    return ret;
}

static PyMethodDef methods[] = {
    {"run", py_run, METH_VARARGS,
     "run(state, layers, (wd_fd, keepalive, timeleft, pet, left), init_pidfd, hb_fd, "
     "pieces, hb_size, lock, crc32) -> 0 (the round due is Python's) or 1 (ticked; Python "
     "takes over)\n\n"
     "The tickler's ticks while nothing changes what the gate says (docs/tickler.md, "
     "\"The compiled tick\")."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tick", NULL, -1, methods};

PyMODINIT_FUNC PyInit__tick(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    PyObject *names = PyTuple_New(S_LEN), *slots = PyTuple_New(SLOT_KINDS);
    if (names == NULL || slots == NULL)
        goto fail;
    for (int i = 0; i < S_LEN; i++) {
        PyObject *s = PyUnicode_FromString(state_names[i]);
        if (s == NULL)
            goto fail;
        PyTuple_SET_ITEM(names, i, s);
    }
    for (int i = 0; i < SLOT_KINDS; i++) {
        PyObject *s = PyUnicode_FromString(slot_names[i]);
        if (s == NULL)
            goto fail;
        PyTuple_SET_ITEM(slots, i, s);
    }
    if (PyModule_AddObject(m, "STATE", names) < 0)
        goto fail;
    names = NULL;
    if (PyModule_AddObject(m, "SLOTS", slots) < 0)
        goto fail;
    slots = NULL;
    if (PyModule_AddIntConstant(m, "ROUND", RET_ROUND) < 0 ||
            PyModule_AddIntConstant(m, "TICKED", RET_TICKED) < 0)
        goto fail;
    return m;
fail:
    Py_XDECREF(names);
    Py_XDECREF(slots);
    Py_DECREF(m);
    return NULL;
}
