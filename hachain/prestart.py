"""`pre_start`: the commands a service runs before its own, as one /bin/sh program.

Owns: turning a service's `pre_start` list and `command` into the argv the restarter
execs, and saying whether a start then reports readiness through the readiness pipe.
Pure: no I/O; imported by the restarter's spawn and by the tests. Must not: start or
signal anything.

Why a shell program and not a phase of the state table: it is what a runit or s6 `run`
script does (prepare, then `exec` the daemon), so the service has one process from the
spawn on, whose pid stays the main pid across the `exec`. Everything the table already
guarantees (one process per service, stop and SIGKILL of its cgroup, re-adoption by a
new restarter, `ready_timeout`) holds for the pre-start commands unchanged, and
`hachain verify` checks the same table. What the program adds:

- each command runs in turn, with the service's user, environment, cwd, limits and
  cgroup; a failing one (a non-zero exit, or killed) ends the start with its status,
  after one line on the service's log naming it; a command written with a leading `-`
  (systemd's prefix) may fail: the line says so and the next one runs;
- the commands do not get `NOTIFY_SOCKET` (a readiness or watchdog message from one of
  them is not the service's), nor the readiness descriptor;
- a `ready = "none"` long-running service is ready when its own command is exec'd,
  not at the spawn: the program writes a newline to the readiness pipe just before the
  `exec` (`ready_pipe`), so what requires the service waits for the pre-start commands.
"""

from __future__ import annotations

from hachain.configtypes import ServiceConfig

SH = "/bin/sh"
IGNORE = "-"  # systemd's prefix: this command may fail


def quote(s: str) -> str:
    """`s` as one /bin/sh word, taken literally."""
    return "'" + s.replace("'", "'\\''") + "'"


def ignored(argv: tuple[str, ...]) -> tuple[bool, tuple[str, ...]]:
    """(may it fail, the argv without the prefix)."""
    if argv and argv[0].startswith(IGNORE):
        return True, (argv[0][len(IGNORE):],) + argv[1:]
    return False, argv


def shown(argv: tuple[str, ...], limit: int = 120) -> str:
    """A command as the log line names it: a shell line (sh -c LINE) as LINE."""
    text = argv[2] if len(argv) == 3 and argv[:2] == (SH, "-c") else " ".join(argv)
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def ready_pipe(c: ServiceConfig) -> bool:
    """Does a start of `c` get the readiness pipe? (ServiceConfig.ready_pipe)"""
    return c.ready_pipe


def script(c: ServiceConfig) -> str:
    """The /bin/sh program that runs `c.pre_start`, then execs `c.command`."""
    fd = c.ready_fd
    pipe = ready_pipe(c)
    lines = [
        "set -f",
        # NOTIFY_SOCKET is kept aside for the service's own command
        'if [ -n "${NOTIFY_SOCKET+x}" ]; then __hc_ns=$NOTIFY_SOCKET; unset NOTIFY_SOCKET; fi',
    ]
    lines += _each(c.pre_start, "pre_start", "the start fails", f" {fd}>&-" if pipe else "")
    lines.append('if [ -n "${__hc_ns+x}" ]; then export NOTIFY_SOCKET="$__hc_ns"; fi')
    if pipe and c.ready == "none":
        # in a subshell that ignores SIGPIPE: a restarter that died meanwhile took the
        # pipe's other end, and an ignored SIGPIPE would outlive the exec
        lines.append(f"(trap '' PIPE; printf '\\n' >&{fd}) 2>/dev/null")
    main = " ".join(quote(a) for a in c.command)
    lines.append(f"exec {main}" + (f" {fd}>&-" if pipe and c.ready == "none" else ""))
    return "\n".join(lines) + "\n"


def exec_argv(c: ServiceConfig) -> tuple[str, ...]:
    """What the restarter execs for `c`: its command, or the pre-start program (its $0
    names the service, so `ps` shows whose it is while the commands run)."""
    if not c.pre_start:
        return c.command
    return (SH, "-c", script(c), f"hachain-pre-start:{c.name}")


def _each(cmds: tuple[tuple[str, ...], ...], key: str, fails: str, tail: str = ""
          ) -> list[str]:
    """The lines that run `cmds` in turn: one that fails (and may not) exits with its
    status after a line on stderr naming it and what follows (`fails`)."""
    lines = []
    for i, raw in enumerate(cmds, 1):
        may_fail, argv = ignored(raw)
        words = " ".join(quote(a) for a in argv) + tail
        what = quote(f"hachain: {key} {i}/{len(cmds)} ({shown(argv)})")
        if may_fail:
            lines.append(f"{words} || printf '%s failed: status %s (may fail: next)\\n' "
                         f"{what} \"$?\" >&2")
        else:
            lines.append(f"{words} || {{ __hc_rc=$?; printf '%s failed: status %s; {fails}"
                         f"\\n' {what} \"$__hc_rc\" >&2; exit \"$__hc_rc\"; }}")
    return lines


def in_turn(cmds: tuple[tuple[str, ...], ...], key: str, fails: str) -> tuple[str, ...]:
    """The argv of a /bin/sh program that runs `cmds` (post_start, post_stop) in turn as
    pre_start runs its own, exiting 0 when all are done."""
    return (SH, "-c", "\n".join(["set -f"] + _each(cmds, key, fails) + ["exit 0"]) + "\n")
