"""`[cluster]` in the configuration and the timing rule (issue 18 item 1): without the
table nothing changes; with it, a TTL and watchdog timeout that cannot fence in time are
refused at `hachain check` with one line naming file, line and key."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hachain import config
from hachain.cluster import timing

CLUSTER = """
[watchdog]
device = "sim"
timeout = 2
pet_interval = 0.5

[chain]
heartbeat_interval = 0.1

[cluster]
endpoints = ["127.0.0.1:2379", "127.0.0.1:22379"]
node = "a"
lease_ttl = 4
margin = 0.25

[service.db]
command = ["/bin/sleep", "100"]
singleton = true
stop_timeout = 0.5
"""


def errors(text: str) -> list[str]:
    with pytest.raises(config.ConfigError) as e:
        config.parse(text, "chain.toml")
    return e.value.errors


def test_no_cluster_table_means_none_and_no_singletons() -> None:
    cfg = config.parse('[service.a]\ncommand = ["/bin/true"]\n')
    assert cfg.cluster is None
    assert not cfg.services["a"].singleton


def test_cluster_table_parses() -> None:
    cfg = config.parse(CLUSTER)
    assert cfg.cluster == config.ClusterConfig(
        endpoints=("127.0.0.1:2379", "127.0.0.1:22379"), node="a", lease_ttl=4,
        prefix="/hachain/", margin=0.25)
    assert cfg.services["db"].singleton


def test_singleton_without_cluster_is_refused() -> None:
    text = CLUSTER.split("[cluster]")[0] + CLUSTER.split("margin = 0.25\n")[1]
    assert errors(text) == ["chain.toml:13: service.db.singleton: needs a [cluster] table "
                            "(etcd endpoints and this node's name)"]


def test_ttl_too_short_for_the_stop_is_refused_naming_the_ttl_line() -> None:
    errs = errors(CLUSTER.replace("stop_timeout = 0.5", "stop_timeout = 2"))
    assert len(errs) == 1
    assert errs[0].startswith("chain.toml:13: cluster.lease_ttl: must be >= 8.17 = 10/3 x "
                              "(margin 0.25 + singleton stop_timeout 2 + 2 x "
                              "heartbeat_interval 0.1)")
    assert errs[0].endswith("got 4")


def test_singletons_without_a_watchdog_device_are_refused() -> None:
    errs = errors(CLUSTER.replace('device = "sim"', 'device = "none"'))
    assert errs == ["chain.toml:3: watchdog.device: singleton services need a watchdog "
                    "device: a hung node is fenced only by its reset"]


def test_infinite_stop_timeout_of_a_singleton_is_refused() -> None:
    errs = errors(CLUSTER.replace("stop_timeout = 0.5", 'stop_timeout = "infinity"'))
    assert len(errs) == 1 and errs[0].startswith("chain.toml:19: service.db.stop_timeout: "
                                                 "a singleton needs a finite stop_timeout")


@pytest.mark.parametrize("bad,key,rule", [
    ('endpoints = ["127.0.0.1"]', "cluster.endpoints", "host:port"),
    ('endpoints = []', "cluster.endpoints", "must name at least one etcd member, got []"),
    ('node = "a b"', "cluster.node", "letters"),
    ("lease_ttl = 1", "cluster.lease_ttl", "must be >= 2, got 1"),
    ("lease_ttl = 4.5", "cluster.lease_ttl", "must be an integer"),
    ("margin = -1", "cluster.margin", "must be >= 0"),
])
def test_bad_cluster_values(bad: str, key: str, rule: str) -> None:
    name = bad.split(" =")[0]
    lines = [ln for ln in CLUSTER.splitlines() if not ln.startswith(name + " =")]
    i = lines.index("[cluster]")
    text = "\n".join(lines[:i + 1] + [bad] + lines[i + 1:]) + "\n"
    errs = errors(text)
    assert len(errs) == 1, errs
    assert errs[0].startswith(f"chain.toml:{i + 2}: {key}: ") and rule in errs[0]


def test_timing_rule_worked_example() -> None:
    # docs/cluster.md's example: TTL 4 s, watchdog timeout 2 s, margin 0.25 s
    assert timing.fence_at(100.0, 4) == 102.0
    assert timing.takeover_wait(4, 2, 0.25) == 0.25
    assert timing.takeover_wait(10, 2, 0.5) == 0.0
    assert timing.start_until(100.0, 4, timing.stop_budget(0.5, 0.1)) == pytest.approx(101.3)
    # the bound: expiry no earlier than t0 + L, plus the wait, is never before F + W + m
    for ttl in (2, 4, 10, 60):
        for w in (1, 2, 5, 30):
            for m in (0.0, 0.25, 1.0):
                t0 = 50.0
                assert t0 + ttl + timing.takeover_wait(ttl, w, m) >= \
                    timing.fence_at(t0, ttl) + w + m


@pytest.mark.slow
def test_check_prints_the_derived_times(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "chain.toml")
    with open(path, "w") as f:
        f.write(CLUSTER)
    out = subprocess.run([sys.executable, "-m", "hachain.cli", "check", "-c", path],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "cluster: node 'a', lease TTL 4 s: it fences itself 2 s after its last renewal; " \
        "a new owner waits 0.25 s after the lease expires" in out.stdout


def test_check_refuses_unsafe_timing_with_exit_2(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "chain.toml")
    with open(path, "w") as f:
        f.write(CLUSTER.replace("lease_ttl = 4", "lease_ttl = 3"))
    out = subprocess.run([sys.executable, "-m", "hachain.cli", "check", "-c", path],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "chain.toml:13: cluster.lease_ttl: must be >=" \
        in out.stderr


def test_single_machine_chain_imports_no_etcd_client() -> None:
    code = ("import sys; from hachain import config, cli; from hachain.restarter import loop; "
            "from hachain.watchdog import tickler, health; "
            "config.parse('[service.a]\\ncommand = [\"/bin/true\"]\\n'); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('aetcd', 'grpc', "
            "'google')]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
