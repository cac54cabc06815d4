/*
 * The native front of the `hachain` command (installed as bin/hachain by scripts/setup.sh
 * when a C compiler is there; the Python CLI is bin/hachain-py).
 *
 * Why: `hachain status` runs often, and on a loaded host a Python interpreter's start
 * alone takes longer than the status answer should (with a crash storm and both cores
 * busy: `python -c pass` p99 ~150-300 ms). This program answers `hachain status
 * [--json]` without starting one: it asks the restarter for the finished output
 * (`status-doc` on the control socket; the restarter runs hachain/status.py, the same
 * gathering and rendering as the CLI) and prints it.
 *
 * Everything else, and every case it is not sure of, goes to the Python CLI by exec
 * with the same arguments, so its output is always the CLI's: another sub-command or
 * option, a configuration file it does not read simply, no control socket, no answer
 * within ASK_TIMEOUT_MS, a refusal (another PID namespace, another persist_dir), any
 * error. It writes nothing before it has the whole answer.
 *
 * Where the directories come from mirrors hachain/cmdline.py `dirs`: --state-dir and
 * --persist-dir, then HACHAIN_STATE_DIR / HACHAIN_PERSIST_DIR, then the `[chain]` table
 * of the configuration file (-c, or /etc/hachain/chain.toml when it exists), then the
 * defaults. The table is read only when it is written plainly (one `key = value` per
 * line; the two directories as strings without escapes); anything else hands over.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_CONFIG "/etc/hachain/chain.toml"
#define DEFAULT_STATE_DIR "/run/hachain"
#define DEFAULT_PERSIST_DIR "/var/lib/hachain"
#define CONTROL_SOCKET "control.sock"
#define ASK_TIMEOUT_MS 1000      /* then the CLI, which judges a silent restarter */
#define MAX_CONFIG (1 << 20)
#define MAX_HEAD 4096
#define MAX_BODY (256 << 20)

static char **g_argv;

/* Hand over to the Python CLI with our own arguments; does not return. */
static void hand_over(void)
{
    char exe[PATH_MAX], path[PATH_MAX + 32];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    int argc = 0;
    while (g_argv[argc])
        argc++;
    char **args = calloc((size_t)argc + 3, sizeof *args);
    if (args == NULL) {
        perror("hachain");
        exit(127);
    }
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash != NULL) {
            *slash = '\0';
            snprintf(path, sizeof path, "%s/hachain-py", exe);
            g_argv[0] = path;
            execv(path, g_argv);
            snprintf(path, sizeof path, "%s/python3", exe);
            args[0] = path;
            args[1] = "-m";
            args[2] = "hachain.cli";
            memcpy(args + 3, g_argv + 1, (size_t)argc * sizeof *args);
            execv(path, args);
        }
    }
    args[0] = "python3";
    args[1] = "-m";
    args[2] = "hachain.cli";
    memcpy(args + 3, g_argv + 1, (size_t)argc * sizeof *args);
    execvp("python3", args);
    fprintf(stderr, "hachain: cannot run the Python CLI (hachain-py or python3 -m "
            "hachain.cli): %s\n", strerror(errno));
    exit(127);
}

/* --- the [chain] table, when written plainly ------------------------------------------ */

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p;
}

/* The rest of a line after a value: blanks, then nothing or a comment. */
static int line_ends(const char *p, const char *end)
{
    p = skip_ws(p, end);
    return p == end || *p == '#' || *p == '\r';
}

/* A plain scalar `"..."` (no escapes), `'...'`, a number or true/false, then the end of
 * the line. Sets *val and *len to a string's contents (else *val = NULL). 0: not plain. */
static int plain_value(const char *p, const char *end, const char **val, size_t *len)
{
    *val = NULL;
    if (p < end && (*p == '"' || *p == '\'')) {
        char q = *p;
        const char *s = ++p;
        while (p < end && *p != q) {
            if (*p == '\\' || (unsigned char)*p < 0x20)
                return 0;
            p++;
        }
        if (p == end)
            return 0;
        *val = s;
        *len = (size_t)(p - s);
        return line_ends(p + 1, end);
    }
    const char *s = p;
    while (p < end && (*p == '+' || *p == '-' || *p == '.' || *p == '_' ||
                       (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z')))
        p++;
    return p > s && line_ends(p, end);
}

/* --- any other value: validated as a TOML 1.0 parser (tomllib) would take it ---------------
 * On one line only: strings (basic with the simple escapes, literal), decimal integers and
 * floats (underscores between digits, exponents, inf, nan), booleans, and arrays and inline
 * tables of those (bare keys, each once; no trailing comma in a table). Anything else,
 * a date, a hex number, a \u escape, a quoted or dotted key, is "not sure": 0, and the
 * CLI reads the file. Each function advances *pp past what it took. */

static int toml_value(const char **pp, const char *end, int depth);

/* 1*DIGIT *( "_" 1*DIGIT ) */
static int toml_digits(const char **pp, const char *end)
{
    const char *p = *pp;
    if (p == end || *p < '0' || *p > '9')
        return 0;
    while (p < end && ((*p >= '0' && *p <= '9') ||
                       (*p == '_' && p + 1 < end && p[1] >= '0' && p[1] <= '9')))
        p++;
    *pp = p;
    return 1;
}

static int toml_number(const char **pp, const char *end)
{
    const char *p = *pp;
    if (p < end && (*p == '+' || *p == '-'))
        p++;
    if (end - p >= 3 && (memcmp(p, "inf", 3) == 0 || memcmp(p, "nan", 3) == 0)) {
        *pp = p + 3;
        return 1;
    }
    const char *s = p;
    if (!toml_digits(&p, end) || (*s == '0' && p - s > 1))
        return 0;  /* a leading zero: not a decimal number */
    if (p < end && *p == '.') {
        p++;
        if (!toml_digits(&p, end))
            return 0;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (!toml_digits(&p, end))
            return 0;
    }
    *pp = p;
    return 1;
}

static int toml_string(const char **pp, const char *end)
{
    const char *p = *pp;
    char q = *p++;
    for (; p < end && *p != q; p++) {
        unsigned char c = (unsigned char)*p;
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return 0;
        if (q == '"' && c == '\\' && (++p == end || *p == '\0' ||
                                      !strchr("btnfr\"\\", *p)))
            return 0;  /* \u and \U too: a code point tomllib may refuse */
    }
    if (p == end)
        return 0;
    *pp = p + 1;
    return 1;
}

static int toml_key(const char **pp, const char *end, const char **key, size_t *len)
{
    const char *p = *pp;
    while (p < end && (*p == '_' || *p == '-' || (*p >= 'a' && *p <= 'z') ||
                       (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')))
        p++;
    if (p == *pp)
        return 0;
    *key = *pp;
    *len = (size_t)(p - *pp);
    *pp = p;
    return 1;
}

/* Adds a key not among the first *n of keys/lens; 0 when it was there, or no room. */
static int new_key(const char **keys, size_t *lens, int *n, int room, const char *k,
                   size_t len)
{
    for (int i = 0; i < *n; i++)
        if (lens[i] == len && memcmp(keys[i], k, len) == 0)
            return 0;
    if (*n == room)
        return 0;
    keys[*n] = k;
    lens[(*n)++] = len;
    return 1;
}

static int toml_value(const char **pp, const char *end, int depth)
{
    const char *p = *pp;
    if (p == end || depth > 32)
        return 0;
    if (*p == '"' || *p == '\'')
        return toml_string(pp, end);
    if (end - p >= 4 && memcmp(p, "true", 4) == 0) {
        *pp = p + 4;
        return 1;
    }
    if (end - p >= 5 && memcmp(p, "false", 5) == 0) {
        *pp = p + 5;
        return 1;
    }
    if (*p == '[') {
        for (p = skip_ws(p + 1, end); p < end && *p != ']';) {
            if (!toml_value(&p, end, depth + 1))
                return 0;
            p = skip_ws(p, end);
            if (p < end && *p == ',')
                p = skip_ws(p + 1, end);
            else if (p < end && *p != ']')
                return 0;
        }
        if (p == end)
            return 0;
        *pp = p + 1;
        return 1;
    }
    if (*p == '{') {
        const char *keys[32];
        size_t lens[32];
        int n = 0;
        p = skip_ws(p + 1, end);
        if (p < end && *p == '}') {
            *pp = p + 1;
            return 1;
        }
        for (;;) {
            const char *k;
            size_t klen;
            if (!toml_key(&p, end, &k, &klen) || !new_key(keys, lens, &n, 32, k, klen))
                return 0;
            p = skip_ws(p, end);
            if (p == end || *p != '=')
                return 0;
            p = skip_ws(p + 1, end);
            if (!toml_value(&p, end, depth + 1))
                return 0;
            p = skip_ws(p, end);
            if (p < end && *p == '}') {
                *pp = p + 1;
                return 1;
            }
            if (p == end || *p != ',')
                return 0;
            p = skip_ws(p + 1, end);
        }
    }
    return toml_number(pp, end);
}

/* Any other value, whole on its line and valid: 0 when it goes on to another line or
 * does not read (or might not). */
static int one_line_value(const char *p, const char *end)
{
    return toml_value(&p, end, 0) && line_ends(p, end);
}

/* Sets *state and *persist (malloc'd, NULL when the table does not name them) from the file's
 * [chain] table. 0: the file must be read by the CLI (unreadable, not plain ASCII, a
 * multi-line string, the table written another way, a key named elsewhere). */
static int chain_dirs(const char *path, char **state, char **persist)
{
    *state = *persist = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char *text = malloc(MAX_CONFIG);
    ssize_t size = 0, n;
    while (text != NULL && size < MAX_CONFIG &&
           (n = read(fd, text + size, (size_t)(MAX_CONFIG - size))) > 0)
        size += n;
    close(fd);
    if (text == NULL || size >= MAX_CONFIG || n < 0)
        goto unsure;
    for (ssize_t i = 0; i < size; i++)
        if ((unsigned char)text[i] >= 0x80 || text[i] == '\0')
            goto unsure;
    if (memmem(text, (size_t)size, "\"\"\"", 3) || memmem(text, (size_t)size, "'''", 3))
        goto unsure;
    int in_chain = 0, tables = 0, named = 0, nkeys = 0;
    const char *keys[64];  /* the [chain] table's keys: each once, as TOML demands */
    size_t lens[64];
    const char *end = text + size;
    for (const char *line = text; line < end;) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (eol == NULL)
            eol = end;
        const char *p = skip_ws(line, eol);
        if (p < eol && *p == '[') {
            const char *q = skip_ws(p + 1, eol);
            in_chain = 0;
            if (eol - q >= 5 && memcmp(q, "chain", 5) == 0) {
                q = skip_ws(q + 5, eol);
                if (q < eol && *q == ']' && line_ends(q + 1, eol)) {
                    in_chain = 1;
                    tables++;
                }
            }
        } else if (in_chain && !line_ends(p, eol)) {
            const char *k = NULL;
            size_t klen = 0;
            if (!toml_key(&p, eol, &k, &klen) || !new_key(keys, lens, &nkeys, 64, k, klen))
                goto unsure;  /* no bare key, a key twice (the CLI refuses), too many */
            p = skip_ws(p, eol);
            const char *v = NULL;
            size_t vlen = 0;
            if (p == eol || *p != '=')
                goto unsure;
            p = skip_ws(p + 1, eol);
            char **slot = NULL;
            if (klen == 9 && memcmp(k, "state_dir", 9) == 0)
                slot = state;
            else if (klen == 11 && memcmp(k, "persist_dir", 11) == 0)
                slot = persist;
            if (slot == NULL ? !one_line_value(p, eol) : !plain_value(p, eol, &v, &vlen))
                goto unsure;
            if (slot != NULL) {
                if (*slot != NULL || v == NULL || vlen == 0 || v[0] != '/')
                    goto unsure;  /* twice, not a string, not absolute: the CLI says */
                *slot = strndup(v, vlen);
                named++;
            }
        }
        line = eol + 1;
    }
    if (tables > 1)
        goto unsure;
    /* each key named once in all, and only where read (else e.g. `chain.state_dir`) */
    int mentions = 0;
    for (const char *key = "state_dir"; key != NULL;
         key = strcmp(key, "state_dir") == 0 ? "persist_dir" : NULL)
        for (const char *s = text; (s = memmem(s, (size_t)(end - s), key, strlen(key)));
             s++)
            mentions++;
    if (mentions != named)
        goto unsure;
    free(text);
    return 1;
unsure:
    free(text);
    free(*state);
    free(*persist);
    *state = *persist = NULL;
    return 0;
}

/* --- asking the restarter -------------------------------------------------------------- */

static long ms_left(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (deadline->tv_sec - now.tv_sec) * 1000 + (deadline->tv_nsec - now.tv_nsec) / 1000000;
}

static int wait_fd(int fd, short events, const struct timespec *deadline)
{
    for (;;) {
        long left = ms_left(deadline);
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int)left);
        if (r > 0)
            return 1;
        if (r < 0 && errno != EINTR)
            return 0;
    }
}

/* A path that needs no escaping inside a JSON string. */
static int json_plain(const char *s)
{
    for (; *s; s++)
        if (*s == '"' || *s == '\\' || (unsigned char)*s < 0x20 || (unsigned char)*s >= 0x80)
            return 0;
    return 1;
}

/* Ask for the status document and print it: the exit code, or -1 to hand over. */
static int ask(const char *state, const char *persist, int as_json)
{
    char pidns[64], req[PATH_MAX + 256];
    ssize_t n = readlink("/proc/self/ns/pid", pidns, sizeof pidns - 1);
    if (n <= 0 || !json_plain(persist))
        return -1;
    pidns[n] = '\0';
    int len = snprintf(req, sizeof req, "{\"op\":\"status-doc\",\"json\":%s,\"tty\":%s,"
                       "\"pidns\":\"%s\",\"persist_dir\":\"%s\"}\n", as_json ? "true" : "false",
                       isatty(1) ? "true" : "false", pidns, persist);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (len <= 0 || (size_t)len >= sizeof req ||
        (size_t)snprintf(addr.sun_path, sizeof addr.sun_path, "%s/%s", state,
                         CONTROL_SOCKET) >= sizeof addr.sun_path)
        return -1;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += ASK_TIMEOUT_MS / 1000;
    deadline.tv_nsec += (ASK_TIMEOUT_MS % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s < 0)
        return -1;
    int code = -1;
    char *body = NULL;
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) < 0)
        goto out;  /* none there, or its backlog is full: the CLI judges */
    for (ssize_t sent = 0; sent < len;) {
        ssize_t w = send(s, req + sent, (size_t)(len - sent), MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EINTR)
            goto out;
        if (w < 0 && !wait_fd(s, POLLOUT, &deadline))
            goto out;
        if (w > 0)
            sent += w;
    }
    /* the reply line, then exactly `bytes` bytes */
    char head[MAX_HEAD + 1];
    size_t got = 0;
    char *nl = NULL;
    while (nl == NULL) {
        if (got == MAX_HEAD || !wait_fd(s, POLLIN, &deadline))
            goto out;
        ssize_t r = recv(s, head + got, MAX_HEAD - got, 0);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
            goto out;
        if (r > 0) {
            got += (size_t)r;
            head[got] = '\0';
            nl = memchr(head, '\n', got);
        }
    }
    *nl = '\0';
    const char *e = strstr(head, "\"exit\":"), *b = strstr(head, "\"bytes\":");
    if (strncmp(head, "{\"ok\":true,", 11) != 0 || e == NULL || b == NULL)
        goto out;  /* refused or an error: the CLI says it in its words */
    char *stop;
    long exit_code = strtol(e + 7, &stop, 10), size = strtol(b + 8, &stop, 10);
    if (exit_code < 0 || exit_code > 255 || size < 0 || size > MAX_BODY)
        goto out;
    body = malloc((size_t)size + 1);
    if (body == NULL)
        goto out;
    size_t have = got - (size_t)(nl + 1 - head);
    if (have > (size_t)size)
        goto out;
    memcpy(body, nl + 1, have);
    while (have < (size_t)size) {
        if (!wait_fd(s, POLLIN, &deadline))
            goto out;
        ssize_t r = recv(s, body + have, (size_t)size - have, 0);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
            goto out;
        if (r > 0)
            have += (size_t)r;
    }
    close(s);
    s = -1;
    for (size_t done = 0; done < (size_t)size;) {
        ssize_t w = write(1, body + done, (size_t)size - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            fprintf(stderr, "hachain: cannot write the status: %s\n", strerror(errno));
            free(body);
            return 1;
        }
        done += (size_t)w;
    }
    code = (int)exit_code;
out:
    free(body);
    if (s >= 0)
        close(s);
    return code;
}

/* `hachain status` with only options this program knows: the exit code, else -1. */
static int status(int argc, char **argv)
{
    const char *state = NULL, *persist = NULL, *config = NULL;
    int as_json = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], **slot = NULL;
        size_t skip = 0;
        if (strcmp(a, "--json") == 0) {
            as_json = 1;
            continue;
        }
        if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0)
            slot = &config;
        else if (strcmp(a, "--state-dir") == 0)
            slot = &state;
        else if (strcmp(a, "--persist-dir") == 0)
            slot = &persist;
        else if (strncmp(a, "--config=", 9) == 0)
            slot = &config, skip = 9;
        else if (strncmp(a, "--state-dir=", 12) == 0)
            slot = &state, skip = 12;
        else if (strncmp(a, "--persist-dir=", 14) == 0)
            slot = &persist, skip = 14;
        else
            return -1;  /* -h, --cluster, an abbreviation, a mistake: the CLI's */
        if (skip == 0 && ++i == argc)
            return -1;
        *slot = skip ? a + skip : argv[i];
        if (**slot == '\0' || (*slot)[0] == '-')
            return -1;
    }
    const char *env_state = getenv("HACHAIN_STATE_DIR"), *env_persist =
        getenv("HACHAIN_PERSIST_DIR");
    if (env_state != NULL && *env_state == '\0')
        env_state = NULL;
    if (env_persist != NULL && *env_persist == '\0')
        env_persist = NULL;
    char *file_state = NULL, *file_persist = NULL;
    struct stat st;
    if (config != NULL || (state == NULL && stat(DEFAULT_CONFIG, &st) == 0)) {
        if (!chain_dirs(config ? config : DEFAULT_CONFIG, &file_state, &file_persist))
            return -1;
        if (file_state == NULL)
            file_state = strdup(DEFAULT_STATE_DIR);
        if (file_persist == NULL)
            file_persist = strdup(DEFAULT_PERSIST_DIR);
        if (file_state == NULL || file_persist == NULL)
            return -1;
    }
    if (state == NULL)
        state = env_state ? env_state : file_state ? file_state : DEFAULT_STATE_DIR;
    if (persist == NULL)
        persist = env_persist ? env_persist : file_persist ? file_persist : DEFAULT_PERSIST_DIR;
    int code = ask(state, persist, as_json);
    free(file_state);
    free(file_persist);
    return code;
}

int main(int argc, char **argv)
{
    g_argv = argv;
    if (argc >= 2 && strcmp(argv[1], "status") == 0) {
        int code = status(argc, argv);
        if (code >= 0)
            return code;
    }
    hand_over();
}
