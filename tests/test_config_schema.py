"""The configuration schema (issue 20 item 6, issue 17 item 4): values that used to pass
`hachain check` and fail later, or mean something else, are refused with one line naming
file, line and key; the reference tables of docs/configuration.md are the schema's."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from hachain import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ERROR_LINE = re.compile(r"^chain\.toml:(\d+): ([^:\n]+): ([^\n]+)$")

SVC = '[service.a]\ncommand = ["/bin/true"]\n'

# (name, TOML text, line, key, what the rule says)
HOLES = [
    # nan and inf, for numbers of every table
    ("nan_heartbeat_timeout", "[watchdog]\nheartbeat_timeout = nan\n", 2,
     "watchdog.heartbeat_timeout", "must be a finite number, got nan"),
    ("nan_pet_interval", "[watchdog]\npet_interval = nan\n", 2, "watchdog.pet_interval",
     "finite"),
    ("inf_heartbeat_interval", "[chain]\nheartbeat_interval = inf\n", 2,
     "chain.heartbeat_interval", "finite"),
    ("nan_restart_delay", "[chain]\nrestart_delay = -nan\n", 2, "chain.restart_delay",
     "finite"),
    ("nan_max_restart_rate", "[watchdog]\nmax_restart_rate = nan\n", 2,
     "watchdog.max_restart_rate", "finite"),
    ("inf_stop_timeout", SVC + "stop_timeout = inf\n", 3, "service.a.stop_timeout",
     "finite"),
    ("nan_ready_timeout", SVC + "ready_timeout = nan\n", 3, "service.a.ready_timeout",
     "finite"),
    ("nan_backoff_factor", SVC + "backoff = { factor = nan }\n", 3,
     "service.a.backoff.factor", "finite"),
    ("nan_backoff_initial_header", SVC + "[service.a.backoff]\ninitial = nan\n", 4,
     "service.a.backoff.initial", "finite"),
    ("inf_intensity_window", SVC + "intensity = { window = inf }\n", 3,
     "service.a.intensity.window", "finite"),
    ("nan_health_interval", SVC + 'health = { kind = "tcp", port = 1, interval = nan }\n', 3,
     "service.a.health.interval", "finite"),
    ("nan_watchdog_sec", SVC + 'ready = "notify"\nwatchdog_sec = nan\n', 4,
     "service.a.watchdog_sec", "finite"),
    ("huge_duration", SVC + "stop_timeout = 1e300\n", 3, "service.a.stop_timeout",
     "must be <= 604800"),
    ("float_for_integer", "[watchdog]\ntimeout = 10.5\n", 2, "watchdog.timeout",
     "must be an integer"),
    ("bool_for_number", "[watchdog]\ntimeout = true\n", 2, "watchdog.timeout",
     "must be an integer, got true"),
    # rlimits
    ("rlimit_soft_above_hard", SVC + "rlimits = { nofile = [4096, 1024] }\n", 3,
     "service.a.rlimits.nofile", "soft limit must be <= the hard limit"),
    ("rlimit_soft_unlimited_hard_not", SVC + "rlimits = { core = [-1, 0] }\n", 3,
     "service.a.rlimits.core", "soft limit must be <= the hard limit"),
    ("rlimit_too_big", SVC + "rlimits = { nofile = 18446744073709551615 }\n", 3,
     "service.a.rlimits.nofile", "-1 (unlimited) to 9223372036854775807"),
    ("rlimit_below_minus_one", SVC + "rlimits = { cpu = -2 }\n", 3,
     "service.a.rlimits.cpu", "must be an integer or [soft, hard]"),
    ("rlimit_three_values", SVC + "rlimits = { cpu = [1, 2, 3] }\n", 3,
     "service.a.rlimits.cpu", "must be an integer or [soft, hard]"),
    ("rlimit_nofile_unlimited", SVC + "rlimits = { nofile = -1 }\n", 3,
     "service.a.rlimits.nofile", "cannot be unlimited (-1)"),
    ("rlimit_nofile_hard_unlimited", SVC + "rlimits = { nofile = [1024, -1] }\n", 3,
     "service.a.rlimits.nofile", "cannot be unlimited (-1)"),
    ("rlimit_nofile_above_nr_open_max", SVC + "rlimits = { nofile = 4294967296 }\n", 3,
     "service.a.rlimits.nofile", "above 2147483584"),
    ("rlimit_unknown", SVC + "rlimits = { files = 10 }\n", 3, "service.a.rlimits.files",
     "the limit must be one of"),
    # env
    ("env_key_with_equals", SVC + 'env = { "A=B" = "x" }\n', 3, 'service.a.env."A=B"',
     "a variable name must be a name without '='"),
    ("env_key_empty", SVC + 'env = { "" = "x" }\n', 3, 'service.a.env.""',
     "must not be empty"),
    ("env_value_nul", SVC + 'env = { A = "x\\u0000y" }\n', 3, "service.a.env.A",
     'must not contain NUL, got "x\\x00y"'),
    ("env_key_nul", SVC + 'env = { "A\\u0000" = "x" }\n', 3, 'service.a.env."A\\x00"',
     "must not contain NUL"),
    ("env_not_strings", SVC + "env = { A = 1 }\n", 3, "service.a.env.A",
     "must be a string, got 1"),
    ("env_scalar", SVC + 'env = "A=1"\n', 3, "service.a.env", "must be a table"),
    # NUL in everything that reaches the kernel
    ("argv_nul", SVC.replace('"/bin/true"', '"/bin/true", "a\\u0000"'), 2,
     "service.a.command", "must not contain NUL"),
    ("argv0_nul", SVC.replace('"/bin/true"', '"/bin/\\u0000true"'), 2,
     "service.a.command", "must not contain NUL"),
    ("shell_nul", '[service.a]\nshell = true\ncommand = "echo \\u0000"\n', 3,
     "service.a.command", "must not contain NUL"),
    ("cwd_nul", SVC + 'cwd = "/srv\\u0000"\n', 3, "service.a.cwd", "must not contain NUL"),
    ("user_nul", SVC + 'user = "web\\u0000"\n', 3, "service.a.user", "must not contain NUL"),
    ("group_nul", SVC + 'group = "web\\u0000"\n', 3, "service.a.group",
     "must not contain NUL"),
    ("ready_command_nul", SVC + 'ready = "exec"\nready_command = ["/bin/x\\u0000"]\n', 4,
     "service.a.ready_command", "must not contain NUL"),
    ("health_command_nul", SVC + 'health = { command = ["/x", "\\u0000"] }\n', 3,
     "service.a.health.command", "must not contain NUL"),
    ("state_dir_nul", '[chain]\nstate_dir = "/run/x\\u0000"\n', 2, "chain.state_dir",
     "must not contain NUL"),
    ("log_dir_nul", '[chain]\nlog_dir = "/log\\u0000"\n', 2, "chain.log_dir",
     "must not contain NUL"),
    ("device_nul", '[watchdog]\ndevice = "/dev/watchdog\\u0000"\n', 2, "watchdog.device",
     "must not contain NUL"),
    ("control_group_nul", '[chain]\ncontrol_group = "g\\u0000"\n', 2, "chain.control_group",
     "must not contain NUL"),
    # what execve(2) would refuse: one argument or NAME=value over 128 KiB
    ("argv_too_long", SVC.replace('"/bin/true"', '"/bin/true", "' + "a" * 131072 + '"'), 2,
     "service.a.command", "must be at most 131071 bytes"),
    ("argv_too_long_utf8", SVC.replace('"/bin/true"', '"/bin/true", "' + "é" * 65536 + '"'),
     2, "service.a.command", "must be at most 131071 bytes"),
    ("env_value_too_long", SVC + 'env = { A = "' + "v" * 130816 + '" }\n', 3,
     "service.a.env.A", "must be at most 130815 bytes"),
    # user and group
    ("user_empty", SVC + 'user = ""\n', 3, "service.a.user", "must not be empty"),
    ("group_blank", SVC + 'group = " "\n', 3, "service.a.group", "must not be empty"),
    ("user_with_colon", SVC + 'user = "a:b"\n', 3, "service.a.user",
     "must be a user or group name"),
    ("user_newline", SVC + 'user = "a\\nb"\n', 3, "service.a.user", "one line"),
    ("user_number", SVC + "user = 1000\n", 3, "service.a.user", "must be a string"),
    # empty commands
    ("command_empty_list", "[service.a]\ncommand = []\n", 2, "service.a.command",
     "must not be empty"),
    ("command_empty_string", '[service.a]\ncommand = [""]\n', 2, "service.a.command",
     "must not be empty"),
    ("command_blank_string", '[service.a]\ncommand = [" "]\n', 2, "service.a.command",
     "must not be empty"),
    ("command_blank_shell", '[service.a]\nshell = true\ncommand = "  "\n', 3,
     "service.a.command", "must not be empty"),
    ("command_empty_shell_list", '[service.a]\nshell = true\ncommand = []\n', 3,
     "service.a.command", "must not be empty"),
    ("command_missing", "[service.a]\nenabled = true\n", 1, "service.a.command",
     "is required"),
    ("command_not_strings", "[service.a]\ncommand = [1]\n", 2, "service.a.command",
     "must be an argv list"),
    ("ready_command_empty", SVC + 'ready = "exec"\nready_command = []\n', 4,
     "service.a.ready_command", "must not be empty"),
    ("health_command_blank", SVC + 'health = { command = [""] }\n', 3,
     "service.a.health.command", "must not be empty"),
    # service names
    ("name_newline", '[service."a\\nb"]\ncommand = ["/bin/true"]\n', 1,
     'service."a\\x0ab"', "a service name must be"),
    ("name_escape", '[service."a\\u001b[2J"]\ncommand = ["/bin/true"]\n', 1,
     'service."a\\x1b[2J"', "a service name must be"),
    ("name_slash", '[service."a/b"]\ncommand = ["/bin/true"]\n', 1, 'service."a/b"',
     "1 to 64 letters"),
    ("name_dotdot", '[service.".."]\ncommand = ["/bin/true"]\n', 1, 'service.".."',
     "starting with a letter or digit"),
    ("name_leading_dot", '[service.".hidden"]\ncommand = ["/bin/true"]\n', 1,
     'service.".hidden"', "starting with a letter or digit"),
    ("name_leading_dash", '[service.-x]\ncommand = ["/bin/true"]\n', 1, "service.-x",
     "starting with a letter or digit"),
    ("name_space", '[service."a b"]\ncommand = ["/bin/true"]\n', 1, 'service."a b"',
     "1 to 64 letters"),
    ("name_too_long", f'[service.{"a" * 65}]\ncommand = ["/bin/true"]\n', 1,
     'service."' + "a" * 61 + '..."', "1 to 64 letters"),
    ("name_empty", '[service.""]\ncommand = ["/bin/true"]\n', 1, 'service.""',
     "must not be empty"),
    ("name_in_requires_bad", SVC + 'requires = ["a\\nb"]\n', 3, "service.a.requires",
     "one line"),
    # a scalar where a table belongs
    ("watchdog_scalar", 'watchdog = "none"\n', 1, "watchdog", 'must be a table, got "none"'),
    ("chain_scalar", 'chain = "/run/x"\n', 1, "chain", 'must be a table, got "/run/x"'),
    ("service_scalar", "service = 3\n", 1, "service", "must be a table, got 3"),
    ("service_x_scalar", "service.x = 1\n", 1, "service.x", "must be a table, got 1"),
    ("service_x_list", "[[service.x]]\ncommand = []\n", 1, "service.x", "must be a table"),
    ("backoff_scalar", SVC + "backoff = 1\n", 3, "service.a.backoff", "must be a table"),
    ("health_scalar", SVC + 'health = "tcp"\n', 3, "service.a.health", "must be a table"),
    # unknown tables and keys
    ("unknown_top_table", '[chain]\n\n[servce.x]\ncommand = ["x"]\n', 3, "servce",
     "unknown table; did you mean 'service'? (expected one of: chain, check, cluster, service, "
     "watchdog)"),
    ("unknown_top_key", 'chian = 1\n', 1, "chian", "unknown key; did you mean 'chain'?"),
    ("unknown_sub_table", SVC + "[service.a.backof]\nfactor = 2\n", 3,
     "service.a.backof", "unknown table; did you mean 'backoff'?"),
    ("unknown_watchdog_key", "[watchdog]\n\ntimout = 5\n", 3, "watchdog.timout",
     "unknown key; did you mean 'timeout'?"),
    ("unknown_key_far_from_all", SVC + "zzz = 1\n", 3, "service.a.zzz",
     "unknown key (expected one of: after, "),
    ("choice_typo", SVC + 'restart = "alway"\n', 3, "service.a.restart",
     'must be one of "always", "on-failure", "on-abnormal", "never" (did you mean '
     '"always"?), got "alway"'),
    ("choice_far", SVC + 'restart = "sometimes"\n', 3, "service.a.restart",
     '"never", got "sometimes"'),
    # other kernel-facing values
    ("cwd_relative", SVC + 'cwd = "srv"\n', 3, "service.a.cwd", "an absolute path"),
    ("device_word", '[watchdog]\ndevice = "dev/watchdog"\n', 2, "watchdog.device",
     "a device path"),
    ("umask_bad", SVC + 'umask = "999"\n', 3, "service.a.umask", "octal"),
    ("signal_bad", SVC + 'stop_signal = "SIGNOPE"\n', 3, "service.a.stop_signal",
     "signal name"),
    ("signal_typo", SVC + 'stop_signal = "SIGTREM"\n', 3, "service.a.stop_signal",
     '(did you mean "SIGTERM"?), got "SIGTREM"'),
    ("signal_zero", SVC + "stop_signal = 0\n", 3, "service.a.stop_signal", "signal name"),
    ("exit_code_bad", SVC + "success_exit = [256]\n", 3, "service.a.success_exit",
     "must be <= 255"),
    ("exit_codes_empty", SVC + "success_exit = []\n", 3, "service.a.success_exit",
     "must have at least 1 item(s), got []"),
    # rules across keys keep their line
    ("heartbeat_vs_timeout", "[watchdog]\nheartbeat_timeout = 1\n", 2,
     "chain.heartbeat_interval", "must be < watchdog.heartbeat_timeout (1)"),
    ("pet_vs_timeout", "[watchdog]\ntimeout = 2\n", 2, "watchdog.pet_interval",
     "must be < watchdog.timeout (2), got 2"),
    ("ready_tcp_no_port", SVC + 'ready = "tcp"\n', 3, "service.a.ready_port",
     'is required when ready = "tcp"'),
    ("cluster_port_out_of_range", '[cluster]\nnode = "n1"\nendpoints = ["etcd:99999"]\n', 3,
     "cluster.endpoints", "must have a port from 1 to 65535"),
    ("cluster_node_newline", '[cluster]\nnode = "n\\n1"\nendpoints = ["etcd:2379"]\n', 2,
     "cluster.node", "one line"),
    ("cluster_scalar", 'cluster = "etcd:2379"\n', 1, "cluster", "must be a table"),
]


@pytest.mark.parametrize("text,line,key,rule", [h[1:] for h in HOLES],
                         ids=[h[0] for h in HOLES])
def test_hole_is_one_line_naming_file_line_key(text: str, line: int, key: str,
                                               rule: str) -> None:
    with pytest.raises(config.ConfigError) as ei:
        config.parse(text, "/etc/hachain/chain.toml")
    errors = ei.value.errors
    for e in errors:
        assert ERROR_LINE.match(e), e
    want = f"chain.toml:{line}: {key}: "
    assert any(e.startswith(want) and rule in e for e in errors), (want, rule, errors)


def test_good_values_next_to_the_holes_pass() -> None:
    """The rules are not too strict: the legal neighbours of the holes load."""
    c = config.parse(
        '[service."web@1.x"]\ncommand = ["/bin/true", ""]\n'
        'env = { "A.B" = "x\\ny", EMPTY = "" }\n'
        'rlimits = { nofile = [1024, 4096], core = [-1, -1], cpu = 0, as = -1 }\n'
        'user = "www-data"\ngroup = "svc_1"\nstop_signal = "int"\n'
        '[service.sh]\nshell = true\ncommand = "echo hi\\nexit 0"\n'
        '[watchdog]\ndevice = "sim:/tmp/wd.sock"\n', "chain.toml")
    s = c.services["web@1.x"]
    assert s.command == ("/bin/true", "")
    assert dict(s.env) == {"A.B": "x\ny", "EMPTY": ""}
    assert set(s.rlimits) == {("nofile", 1024, 4096), ("core", -1, -1), ("cpu", 0, 0),
                              ("as", -1, -1)}  # and nofile = -1 is refused (see HOLES)
    assert c.services["sh"].command == ("/bin/sh", "-c", "echo hi\nexit 0")


def test_every_numeric_key_refuses_nan_and_inf() -> None:
    """Walks the schema itself: no numeric key, present or future, takes nan or inf."""
    from hachain import schema as S

    def numeric(table: S.Table, at: tuple[str, ...]) -> list[tuple[tuple[str, ...], S.Number]]:
        out = []
        for k in table.keys:
            if isinstance(k.kind, S.Table):
                out += numeric(k.kind, at + (k.name,))
            elif isinstance(k.kind, S.Number):
                out.append((at + (k.name,), k.kind))
        return out

    keys = (numeric(config.CHAIN, ("chain",)) + numeric(config.WATCHDOG, ("watchdog",))
            + numeric(config.SERVICE, ("service", "a")) + numeric(config.CHECK, ("check", "c")))
    assert len(keys) >= 25
    for path, _kind in keys:
        for bad in ("nan", "inf", "-inf"):
            header, key = ".".join(path[:-1]), path[-1]
            text = f"[{header}]\n{key} = {bad}\n"
            if path[0] == "check":
                text = f'[{header}]\nkind = "load"\nmax_load = 1\n{key} = {bad}\n' \
                    if key != "max_load" else f'[{header}]\nkind = "load"\n{key} = {bad}\n'
            if path[0] == "service":
                text = SVC + f"[{header}]\n{key} = {bad}\n" if len(path) > 3 else \
                    SVC + f"{key} = {bad}\n"
            with pytest.raises(config.ConfigError) as ei:
                config.parse(text, "chain.toml")
            assert any(f": {'.'.join(path)}: must be a finite number" in e
                       for e in ei.value.errors), (path, bad, ei.value.errors)


def test_check_command_reports_a_hole_with_exit_2(tmp_path: os.PathLike[str]) -> None:
    bad = os.path.join(tmp_path, "chain.toml")
    with open(bad, "w") as f:
        f.write("[chain]\nheartbeat_interval = 1\n\n[watchdog]\nheartbeat_timeout = nan\n"
                '[servce.x]\ncommand = ["x"]\n')
    r = subprocess.run([sys.executable, "-m", "hachain.cli", "check", "-c", bad],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r
    lines = r.stderr.splitlines()
    assert "hachain: chain.toml:5: watchdog.heartbeat_timeout: must be a finite number, " \
        "got nan" in lines, lines
    assert any(ln.startswith("hachain: chain.toml:6: servce: unknown table") for ln in lines)
    assert r.stdout == ""


def test_env_overrides_obey_the_schema() -> None:
    c = config.parse(SVC, "chain.toml")
    assert config.with_env_overrides(c, {"HACHAIN_STATE_DIR": "/run/other"}).chain.state_dir \
        == "/run/other"
    for var, val, rule in (("HACHAIN_STATE_DIR", "relative", "an absolute path"),
                           ("HACHAIN_CGROUP_ROOT", "x", '"auto", "none" or an absolute path'),
                           ("HACHAIN_WATCHDOG_DEVICE", "watchdog0", "a device path")):
        with pytest.raises(config.ConfigError) as ei:
            config.with_env_overrides(c, {var: val})
        assert str(ei.value).startswith(f"{var}: must be ") and rule in str(ei.value)


def test_doc_reference_tables_are_the_schemas() -> None:
    """docs/configuration.md's tables are generated from the schema, and still agree."""
    path = os.path.join(ROOT, "docs", "configuration.md")
    with open(path) as f:
        doc = f.read()
    assert doc.count("<!-- schema: ") == len(config.DOC_TABLES)
    assert config.render_doc(doc) == doc, \
        "docs/configuration.md is stale: run python -m hachain.config docs/configuration.md"
    rows = set(re.findall(r"^\| `([a-z_.]+)` \|", doc, re.MULTILINE))

    def dotted(tab: S.Table, prefix: str = "") -> set[str]:
        out = set()
        for k in tab.keys:
            out.add(prefix + k.name)
            if isinstance(k.kind, S.Table):
                out |= dotted(k.kind, prefix + k.name + ".")
        return out
    sections = [k.kind for k in config.FILE.keys if isinstance(k.kind, S.Table)]
    sections += [config.SERVICE, config.CHECK]
    assert rows == set().union(*(dotted(t) for t in sections))


def test_every_key_has_doc_text_and_a_dataclass_field() -> None:
    """A new key needs words for the docs, a field to land in, and (custom kinds)
    examples for the generated tests."""
    from dataclasses import fields

    from hachain import schema as S

    def kinds(kind: S.Kind) -> list[S.Kind]:
        inner = [kind.item] if isinstance(kind, S.ListOf) else \
            [kind.key, kind.value] if isinstance(kind, S.MapOf) else []
        return [kind] + [x for i in inner for x in kinds(i)]

    def walk(table: S.Table) -> None:
        names = {f.name for f in fields(table.cls)}
        for k in table.keys:
            assert k.doc or isinstance(k.kind, S.Number), k.name
            assert k.name in names or k.default is not S.FROM_CLASS, k.name
            for kind in kinds(k.kind):
                # the generated tests draw good values of a custom kind from its examples
                assert not isinstance(kind, S.Custom) or kind.examples, k.name
                if isinstance(kind, S.Table):
                    walk(kind)
    walk(config.FILE)


# --- generated configurations ------------------------------------------------------------
#
# Each key of the schema gets, at random, nothing, a good value or a hostile one (nan,
# inf, huge numbers, NUL, '=', newlines, blanks, a table where a scalar belongs and the
# reverse); service names are drawn from good and hostile ones. The file is written as
# TOML text, remembering the line of each key. Then:
# - a file that loads gives values the runtime takes (checked by `runtime_accepts`, which
#   is written against what the kernel and the restarter need, not against the schema);
# - a file that does not load gives one line per error, FILE:LINE: KEY: RULE, and the
#   line is that of the key when the key is in the file.

import math  # noqa: E402
from dataclasses import fields, is_dataclass  # noqa: E402
from typing import Any  # noqa: E402

from hypothesis import HealthCheck, Phase, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hachain import schema as S  # noqa: E402

GOOD_NAMES = ["a", "b", "web", "db@1", "x.y", "job-2", "Z_9"]
BAD_NAMES = ["", "a\nb", "..", ".x", "a/b", "a b", "-x", "\x1b[2J", "a\x00", "é", "a" * 65,
             "a\u2028b"]
NASTY_TEXT = st.sampled_from(["", " ", "\x00", "a\x00b", "A=B", "=", "\n", "a\nb", "\t",
                              "\x1b[31m", "relative/path", "/ok/path", "..", "\u2028"])
# Values that broke something once, or could: tried on every key by the exhaustive test
# and drawn often by the generated ones.
NASTY_VALUES: list[Any] = [
    float("nan"), float("inf"), -float("inf"), 1e300, -1e300, -1, 0, 0.5, 2 ** 63,
    2 ** 64 - 1, -2 ** 63, 10 ** 30, True, False, "", " ", "\x00", "a\x00b", "A=B", "=",
    "\n", "a\nb", "\x1b[2J", "relative", "\u2028", [], [""], [" "], ["\x00"], [1],
    ["/bin/true", "\x00"], [10, 5], [-1, 0], [0, 2 ** 63], {}, {"": ""}, {"A=B": "x"},
    {"A": "\x00"}, {"nofile": [10, 5]}, {"A": 1},
]
HOSTILE = st.one_of(
    st.sampled_from(NASTY_VALUES),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-2 ** 63, 2 ** 63 - 1),
    NASTY_TEXT,
    st.text(max_size=8),
    st.lists(st.one_of(NASTY_TEXT, st.integers(-3, 3)), max_size=3),
    st.dictionaries(NASTY_TEXT, st.one_of(NASTY_TEXT, st.integers(-3, 3)), max_size=2),
)
# no "explain" phase: its tracing makes one failure take minutes on Python 3.11
PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]
ROLL = st.integers(0, 99).map(lambda n: n / 100)
SAFE_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), min_size=1,
                    max_size=12).filter(lambda t: t.strip() != "")


def good(kind: S.Kind) -> st.SearchStrategy[Any]:
    """Values of `kind` that look right (a few still break rules across keys)."""
    if isinstance(kind, S.Number):
        lo, hi = kind.lo, min(kind.hi, max(kind.lo, 0) + 100)
        if kind.integer:
            return st.integers(int(lo) + (1 if kind.lo_open else 0), int(hi))
        return st.floats(lo, hi, exclude_min=kind.lo_open)
    if isinstance(kind, S.Bool):
        return st.booleans()
    if isinstance(kind, S.Choice):
        return st.sampled_from(kind.choices)
    if isinstance(kind, S.PathText):
        return st.one_of(st.sampled_from(kind.special or ("/x",)),
                         SAFE_TEXT.map(lambda t: "/" + t))
    if isinstance(kind, S.Text):
        if kind.pattern == config.NAME_RE.pattern:
            return st.sampled_from(GOOD_NAMES)
        if kind.pattern:
            return st.from_regex(kind.pattern, fullmatch=True).filter(lambda t: "\0" not in t)
        return st.text(max_size=10)
    if isinstance(kind, S.Argv):
        argv = st.lists(st.text(max_size=6), max_size=3).flatmap(
            lambda rest: SAFE_TEXT.map(lambda prog: [prog, *rest]))
        return st.one_of(argv, SAFE_TEXT) if kind.string_ok else argv
    if isinstance(kind, S.ListOf):
        items = good(kind.item)
        return st.one_of(st.lists(items, max_size=3), items) if kind.one_ok else \
            st.lists(items, max_size=3)
    if isinstance(kind, S.MapOf):
        return st.dictionaries(good(kind.key), good(kind.value), max_size=3)
    if isinstance(kind, S.Custom):
        return st.sampled_from(kind.examples)
    if isinstance(kind, S.Table):
        return table(kind, hostile_rate=0)
    raise AssertionError(f"no generator for {kind!r}")


def table(kind: S.Table, hostile_rate: float = 0.15) -> st.SearchStrategy[dict[str, Any]]:
    @st.composite
    def draw_table(draw: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in kind.keys:
            roll = draw(ROLL)
            required = k.default is not S.FROM_CLASS and k.default is S.REQUIRED or \
                kind.default_of(k) is S.REQUIRED
            if roll < hostile_rate:
                out[k.name] = draw(HOSTILE)
            elif roll < 0.55 or required:
                out[k.name] = draw(good(k.kind))
        if draw(ROLL) < hostile_rate / 3:
            out[draw(st.sampled_from(["typo", "servce", "comand"]))] = draw(HOSTILE)
        return out
    return draw_table()


@st.composite
def configurations(draw: Any) -> dict[str, Any]:
    top: dict[str, Any] = {}
    rate = draw(st.sampled_from([0.0, 0.0, 0.02, 0.15]))  # half the files have no hostile value
    for name, kind in (("chain", config.CHAIN), ("watchdog", config.WATCHDOG)):
        roll = draw(ROLL)
        if roll < rate / 3:
            top[name] = draw(HOSTILE)
        elif roll < 0.8:
            top[name] = draw(table(kind, rate))
    names = draw(st.lists(st.sampled_from(GOOD_NAMES if rate == 0 else GOOD_NAMES + BAD_NAMES),
                          max_size=4, unique=True))
    top["service"] = {n: draw(table(config.SERVICE, rate)) for n in names}
    if draw(ROLL) < 0.3:
        top["cluster"] = draw(table(config.CLUSTER, rate))
    if draw(ROLL) < 0.3:
        top["check"] = {n: draw(table(config.CHECK, rate)) for n in draw(st.lists(
            st.sampled_from(GOOD_NAMES if rate == 0 else GOOD_NAMES + BAD_NAMES),
            max_size=2, unique=True))}
    if draw(ROLL) < rate / 3:
        top["service"] = draw(HOSTILE)
    return top


def toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else toml_str(k)


def toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else "inf" if v == float("inf") else \
            "-inf" if v == -float("inf") else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    assert isinstance(v, dict)
    return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"


def write(top: dict[str, Any], sub_headers: bool) -> tuple[str, dict[str, int]]:
    """TOML text for `top`, and the line of each dotted key (as error lines spell it)."""
    lines: list[str] = []
    where: dict[str, int] = {}

    def put(path: tuple[str, ...], text: str) -> None:
        lines.append(text)
        where.setdefault(S.key_text(path), len(lines))

    def section(path: tuple[str, ...], d: dict[str, Any]) -> None:
        put(path, "[" + ".".join(toml_key(p) for p in path) + "]")
        later = []
        for k, v in d.items():
            if sub_headers and isinstance(v, dict) and v:
                later.append((k, v))
            else:
                put(path + (k,), f"{toml_key(k)} = {toml_value(v)}")
        for k, v in later:
            section(path + (k,), v)

    svcs = top.get("service")
    for name, v in top.items():  # scalars where tables belong come before any header
        if not isinstance(v, dict):
            put((name,), f"{name} = {toml_value(v)}")
    for svc_name, body in (svcs.items() if isinstance(svcs, dict) else ()):
        if not isinstance(body, dict):
            put(("service", svc_name), f"service.{toml_key(svc_name)} = {toml_value(body)}")
    for name in ("chain", "watchdog", "cluster"):
        if isinstance(top.get(name), dict):
            section((name,), top[name])
    for svc_name, body in (svcs.items() if isinstance(svcs, dict) else ()):
        if isinstance(body, dict):
            section(("service", svc_name), body)
    return "\n".join(lines) + "\n", where


NO_TIMEOUT = (".stop_timeout", ".ready_timeout")  # "infinity" is documented for these


def runtime_accepts(cfg: config.Config) -> None:
    """What the runtime needs of a loaded configuration, stated without the schema."""
    import resource
    import signal as sig

    def walk(obj: Any, at: str) -> None:
        if is_dataclass(obj):
            for f in fields(obj):
                walk(getattr(obj, f.name), f"{at}.{f.name}")
        elif isinstance(obj, (tuple, list)):
            for x in obj:
                walk(x, at)
        elif isinstance(obj, dict):
            for k, x in obj.items():
                walk(k, at)
                walk(x, at)
        elif isinstance(obj, float) and obj == math.inf and at.endswith(NO_TIMEOUT):
            pass  # "infinity": the restarter arms no timer at all
        elif isinstance(obj, float):
            assert obj == obj and abs(obj) < 1e9, (at, obj)  # no nan, no inf, timer-sized
        elif isinstance(obj, str):
            assert "\0" not in obj, at
    walk(cfg, "config")
    assert cfg.chain.state_dir.startswith("/") and cfg.chain.persist_dir.startswith("/")
    assert cfg.chain.heartbeat_interval < cfg.watchdog.heartbeat_timeout
    assert 0 < cfg.watchdog.pet_interval < cfg.watchdog.timeout
    for name, c in cfg.checks.items():
        assert c.name == name and 0 < c.timeout <= c.interval, (name, c)
        assert all(argv and argv[0] for argv in (c.command, *c.repair) if argv), c
    if cfg.cluster is not None:
        assert cfg.cluster.endpoints and cfg.cluster.node.isprintable()
        for ep in cfg.cluster.endpoints:
            host, port = ep.rsplit(":", 1)
            assert host and 1 <= int(port) <= 65535, ep
        assert cfg.cluster.lease_ttl >= 2 and cfg.cluster.prefix.startswith("/")
    for name, s in cfg.services.items():
        if s.singleton:
            assert cfg.cluster is not None and s.stop_timeout != math.inf
        assert s.name == name and name.isprintable() and "/" not in name
        assert name not in (".", "..") and not name.startswith((".", "-"))
        assert 0 < len(name.encode()) <= 64
        assert s.command and s.command[0].strip(), s.command
        for argv in (s.ready_command, s.health.command if s.health else ()):
            assert not argv or argv[0].strip()
        for k, v in s.env:
            assert k and "=" not in k and "\0" not in k + v
        for rname, soft, hard in s.rlimits:
            assert hasattr(resource, "RLIMIT_" + rname.upper())
            inf = resource.RLIM_INFINITY
            soft_v = 2 ** 64 if soft == inf else soft
            hard_v = 2 ** 64 if hard == inf else hard
            assert 0 <= soft_v <= hard_v, (rname, soft, hard)
            assert hard == inf or hard < 2 ** 63
            if rname == "nofile":  # setrlimit(2): EPERM above fs.nr_open, always below 2**31
                assert inf not in (soft, hard) and hard < 2 ** 31, (soft, hard)
        for who in (s.user, s.group):
            assert who is None or (who.strip() and who.isprintable() and ":" not in who)
        assert s.cwd is None or s.cwd.startswith("/")
        assert s.umask is None or 0 <= s.umask <= 0o777
        sig.Signals(s.stop_signal)
        assert all(0 <= c <= 255 for c in s.success_exit)
        assert 3 <= s.ready_fd <= 1023 and 0 <= s.ready_port <= 65535
        assert s.intensity.window > 0 and s.backoff.factor >= 1
        assert s.backoff.max >= s.backoff.initial
        for dep in s.deps + s.conflicts:
            assert dep in cfg.services and dep != name


def check_rejection(text: str, where: dict[str, int], err: config.ConfigError) -> None:
    assert err.errors
    n_lines = text.count("\n")
    for e in err.errors:
        m = re.match(r"^x\.toml:(\d+): .+: .+$", e)
        assert m and e.isprintable(), e
        line, rest = int(m.group(1)), e.split(": ", 1)[1]
        assert 1 <= line <= n_lines, e
        named = [k for k in where if rest.startswith(k + ": ")]
        if named and "dependency cycle" not in e:
            assert line == where[max(named, key=len)], (e, text)


@pytest.mark.slow  # 150 generated configurations
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=PHASES)
@given(configurations(), st.booleans())
def test_generated_configs_load_into_runtime_values_or_fail_on_one_line(
        top: dict[str, Any], sub_headers: bool) -> None:
    text, where = write(top, sub_headers)
    try:
        cfg = config.parse(text, "/etc/x.toml")
    except config.ConfigError as e:
        event("refused")
        check_rejection(text, where, e)
    else:
        event("loaded")
        runtime_accepts(cfg)


def all_keys(tab: S.Table, at: tuple[str, ...]) -> list[tuple[str, ...]]:
    out = []
    for k in tab.keys:
        if isinstance(k.kind, S.Table):
            out += all_keys(k.kind, at + (k.name,))
        out.append(at + (k.name,))
    return out


EVERY_KEY = (all_keys(config.CHAIN, ("chain",)) + all_keys(config.WATCHDOG, ("watchdog",))
             + all_keys(config.CLUSTER, ("cluster",))
             + all_keys(config.SERVICE, ("service", "a"))
             + all_keys(config.CHECK, ("check", "c")))
CLUSTER_OK = {"endpoints": ["127.0.0.1:2379"], "node": "n1"}


@pytest.mark.parametrize("path", EVERY_KEY, ids=[".".join(p) for p in EVERY_KEY])
def test_every_key_with_every_nasty_value(path: tuple[str, ...]) -> None:
    """Each key of the schema, alone in a good file, set to each of NASTY_VALUES: the file
    gives runtime values, or is refused on one line per error (file:line: key: rule)
    naming the key (or, for a rule across keys, a key beside it)."""
    for bad in NASTY_VALUES:
        top: dict[str, Any] = {"service": {"a": {"command": ["/bin/true"]}}}
        if path[0] == "cluster":
            top["cluster"] = dict(CLUSTER_OK)
        if path[0] == "check":
            top["check"] = {"c": {"command": ["/bin/true"]}}
        d = top
        for p in path[:-1]:
            d = d.setdefault(p, {})
        d[path[-1]] = bad
        text, where = write(top, False)
        try:
            cfg = config.parse(text, "x.toml")
        except config.ConfigError as e:
            check_rejection(text, where, e)
            # the key itself, or a rule across keys of its table or naming it
            assert any(f": {S.key_text(path)}: " in x or f": {S.key_text(path[:-1])}." in x
                       or ".".join(path[-2:]) in x for x in e.errors), (bad, e.errors)
        else:
            runtime_accepts(cfg)


def test_a_good_file_never_builds_the_line_locator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding lines costs a second pass over the text; loading a good file (every layer
    does, at each start and reload) skips it, so the schema costs no more than before."""
    def refuse(text: str) -> None:
        raise AssertionError("Locator built for a good file")
    monkeypatch.setattr(S, "Locator", refuse)
    text = "".join(f'[service.s{i}]\ncommand = ["/bin/true"]\nrequires = ["s{i - 1}"]\n'
                   if i else '[service.s0]\ncommand = ["/bin/true"]\n' for i in range(200))
    assert len(config.parse(text, "chain.toml").services) == 200
    with pytest.raises(AssertionError, match="Locator built"):
        config.parse(text + "bad = 1\n", "chain.toml")


def test_the_longest_accepted_argument_and_variable_really_exec() -> None:
    """The byte limits are the kernel's: the longest values `check` accepts start."""
    c = config.parse(SVC.replace('"/bin/true"', '"/bin/true", "' + "a" * 131071 + '"')
                     + 'env = { ' + "K" * 255 + ' = "' + "v" * 130815 + '" }\n', "chain.toml")
    s = c.services["a"]
    r = subprocess.run(s.command, env=dict(s.env), timeout=30)
    assert r.returncode == 0


def test_config_and_schema_import_no_layer() -> None:
    """Issue 17.4: the configuration imports nothing from the restarter (or any layer),
    only the shared names (channels, conditions, seccomp, devices, ipfilter, listen:
    stdlib-only at import; seccomp loads libseccomp only to build a filter, hachain.bpf ctypes only
    to load a program); the schema imports nothing of hachain but the leaf module of
    shared errors (hachain.errors: ConfigError, closest)."""
    import ast
    for name, allowed in (("config.py", {"hachain.schema", "hachain.cluster",
                                         "hachain.channels", "hachain.errors",
                                         "hachain.configtypes", "hachain.conditions",
                                         "hachain.seccomp", "hachain.devices",
                                         "hachain.ipfilter", "hachain.listen"}),
                          # (classcache: stdlib-only, the compiled dataclass methods)
                          ("configtypes.py", {"hachain.channels", "hachain.classcache"}),
                          ("schema.py", {"hachain.errors"})):
        tree = ast.parse(open(os.path.join(ROOT, "hachain", name)).read())
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {f"{n.module}.{a.name}" if n.module == "hachain" else str(n.module)
                 for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        ours = {m for m in mods if m.startswith("hachain")}
        assert all(any(m.startswith(a) for a in allowed) for m in ours), (name, ours)


def test_the_restarter_starts_without_the_schema() -> None:
    """The restarter unpickles the running snapshot with the types of configtypes.py; the
    schema and the parsing code (a quarter of its import time, bench/import_profile.py)
    are imported only when it parses a file itself (a reload). Nor does it load OpenSSL
    (hashlib: ~4 MB of RSS for the snapshot's one hash) or the bz2 and lzma libraries
    (shutil, for a command looked up in PATH) before they are needed."""
    code = ("import sys, hachain.restarter.__main__; "
            "print(sorted(m for m in ('hachain.config', 'hachain.schema', 'tomllib', "
            "'hashlib', '_hashlib', 'shutil', 'lzma', 'bz2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT}, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_env_overrides_equal_to_the_file_change_nothing_and_others_are_checked(
        tmp_path: os.PathLike[str]) -> None:
    """snapshot.with_env_overrides returns the parsed configuration itself when every
    override set says what the file says (init passes the state directory on), and is
    config.with_env_overrides otherwise: a changed value applied, a bad one refused."""
    from hachain import snapshot
    state = os.path.join(tmp_path, "st")
    cfg = config.parse(f'[chain]\nstate_dir = "{state}"\n[watchdog]\ndevice = "none"\n',
                       "c.toml")
    same = {"HACHAIN_STATE_DIR": state, "HACHAIN_WATCHDOG_DEVICE": "none",
            "HACHAIN_PERSIST_DIR": ""}
    assert snapshot.with_env_overrides(cfg, same) is cfg
    moved = dict(same, HACHAIN_STATE_DIR=state + "2")
    assert snapshot.with_env_overrides(cfg, moved) == config.with_env_overrides(cfg, moved)
    assert snapshot.with_env_overrides(cfg, moved).chain.state_dir == state + "2"
    with pytest.raises(config.ConfigError, match="HACHAIN_STATE_DIR: "):
        snapshot.with_env_overrides(cfg, dict(same, HACHAIN_STATE_DIR="/" + "x" * 200))


def test_a_cycle_is_named_from_its_least_service_in_dependency_order() -> None:
    text = ('[service.c]\ncommand = ["x"]\nafter = ["a"]\n'
            '[service.a]\ncommand = ["x"]\nrequires = ["b"]\n'
            '[service.b]\ncommand = ["x"]\nwants = ["c"]\n')
    with pytest.raises(config.ConfigError) as ei:
        config.parse(text, "chain.toml")
    assert ei.value.errors == ["chain.toml:4: service.a: dependency cycle: a -> b -> c -> a"]


def test_a_file_name_with_a_newline_still_gives_one_line(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "bad\nname.toml")
    with open(path, "w") as f:
        f.write("[watchdog]\ntimeout = nan\n")
    for bad in (path, path + ".missing"):
        with pytest.raises(config.ConfigError) as ei:
            config.load(bad)
        assert all(e.isprintable() for e in ei.value.errors), ei.value.errors
    with pytest.raises(config.ConfigError) as ei:
        config.load(path)
    assert ei.value.errors == ["bad\\nname.toml:2: watchdog.timeout: must be a finite number, "
                               "got nan"]


@pytest.mark.parametrize("value", [
    """["'''"]""",                   # a literal multi-line quote inside a basic string
    r'''["\"\"\""]''',               # escaped quotes inside a basic string
    """['\"\"\"']""",                # a basic multi-line quote inside a literal string
    '"""a\n\\"""\nb"""',             # a multi-line string holding an escaped quote
    "'''x\ny'''  # '''",             # closed, then the quote again in a comment
])
def test_quotes_inside_strings_do_not_shift_the_lines_after(value: str) -> None:
    """A multi-line string's quotes inside another string or a comment open nothing (found
    by the generated configurations: `command = ["'''"]`): later errors keep their line."""
    text = f'[service.a]\ncommand = ["x"]\nuser = {value}\nsuccess_exit = []\n'
    with pytest.raises(config.ConfigError) as ei:
        config.parse(text, "chain.toml")
    line = text.count("\n")
    assert f"chain.toml:{line}: service.a.success_exit: " in "\n".join(ei.value.errors)


@given(st.text(max_size=3000))
@settings(max_examples=200, deadline=None)
def test_the_snapshot_digest_is_sha256(text: str) -> None:
    """snapshot.digest (CPython's own SHA-256, no OpenSSL) says what hashlib says: a
    snapshot written by one version is accepted by the other."""
    import hashlib

    from hachain import snapshot
    assert snapshot.digest(text) == hashlib.sha256(text.encode()).hexdigest()
