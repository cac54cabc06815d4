"""ip_address_allow and ip_address_deny (systemd's IPAddressAllow=, IPAddressDeny=): the
remote addresses a service may exchange packets with, held by cgroup programs.

The items' side, pure; then a real restarter on real cgroups, on the loopback only:
listeners on 127.0.0.1, 127.0.0.2 and ::1 on the host, and a service that tries each
(TCP, and UDP, whose refused send says EPERM at once) under each list; a reload that
drops the keys gives every address back. Without cgroups the start is refused.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from hachain import config, importer, ipfilter
from hachain.configtypes import ServiceConfig

RUN_BOUND = 30.0  # a restarter answering, a few Python processes; no chain timer involved


def test_items() -> None:
    assert ipfilter.networks("localhost") == [ipaddress.ip_network("127.0.0.0/8"),
                                              ipaddress.ip_network("::1/128")]
    assert ipfilter.networks("10.1.2.3/16") == [ipaddress.ip_network("10.1.0.0/16")]
    assert ipfilter.networks("fe80::1") == [ipaddress.ip_network("fe80::1/128")]
    with pytest.raises(ValueError, match="an IPv4 or IPv6 address or prefix"):
        ipfilter.networks("10.0.0.0/33")
    with pytest.raises(config.ConfigError, match=r"service\.a\.ip_address_deny: 'anything': "
                       r"an IPv4 or IPv6 address or prefix"):
        config.parse('[service.a]\ncommand = ["/bin/x"]\nip_address_deny = ["anything"]\n')


def test_a_prefix_that_matches_everything_ends_its_family() -> None:
    """(What follows a /0 is never reached, and the verifier refuses unreachable code:
    the program stops there; the kernel loads it in the tests below.)"""
    c = ServiceConfig("a", ("/bin/x",), ip_address_deny=("any", "10.0.0.0/8"))
    a, b = ipfilter.programs(c)
    short = ipfilter.programs(ServiceConfig("a", ("/bin/x",), ip_address_deny=("any",)))
    assert (a, b) == short


def test_import_carries_both_lists(tmp_path: Any) -> None:
    unit = tmp_path / "timesyncd.service"
    unit.write_text("[Service]\nExecStart=/bin/x\nIPAddressDeny=any\nIPAddressAllow=localhost\n"
                    "IPAddressAllow=10.1.0.0/16 fe80::1\nIPAddressDeny=\nIPAddressDeny=any\n")
    text, conv = importer.import_files([str(unit)])
    s = config.parse(text, "imported.toml").services["timesyncd"]
    assert s.ip_address_allow == ("localhost", "10.1.0.0/16", "fe80::1")
    assert s.ip_address_deny == ("any",)
    assert not conv.warnings


# --- on real cgroups ------------------------------------------------------------------------

@pytest.fixture
def listeners() -> Iterator[list[tuple[str, int, str]]]:
    """(address, port, proto) of TCP and UDP sockets on the host's loopback."""
    socks, out = [], []
    for addr in ("127.0.0.1", "127.0.0.2", "::1"):
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        t = socket.socket(fam, socket.SOCK_STREAM)
        t.bind((addr, 0))
        t.listen()
        u = socket.socket(fam, socket.SOCK_DGRAM)
        u.bind((addr, 0))
        socks += [t, u]
        out += [(addr, t.getsockname()[1], "tcp"), (addr, u.getsockname()[1], "udp")]
    yield out
    for s in socks:
        s.close()


PROBE = """
import socket, sys
for item in sys.argv[1:]:
    addr, port, proto = item.split(",")
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        if proto == "tcp":
            s.connect((addr, int(port)))
        else:
            s.sendto(b"x", (addr, int(port)))
        print(f"{addr}/{proto}=ok")
    except OSError as e:
        print(f"{addr}/{proto}=" + ("eperm" if e.errno == 1 else "no"))
print("probed", flush=True)
"""


def conf(tmp: Any, targets: list[tuple[str, int, str]], extra: str) -> str:
    (tmp / "probe.py").write_text(PROBE)
    args = ", ".join(f'"{a},{p},{t}"' for a, p, t in targets)
    return f'''
[service.net]
command = ["{sys.executable}", "{tmp}/probe.py", {args}]
kind = "oneshot"
{extra}
'''


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="loading a cgroup program needs root")
def test_deny_any_allow_some_and_a_reload_gives_all_back(
        restarter: Any, tmp_path: Any, listeners: list[tuple[str, int, str]]) -> None:
    r = restarter(conf(tmp_path, listeners, 'ip_address_deny = ["any"]\n'
                                            'ip_address_allow = ["127.0.0.1", "::1"]'))
    r.needs_cgroups("the programs are attached to one")
    r.wait_state("net", "done", timeout=RUN_BOUND)
    assert r.probed("net", 1) == {"127.0.0.1/tcp": "ok", "127.0.0.1/udp": "ok",
                             "127.0.0.2/tcp": "no", "127.0.0.2/udp": "eperm",
                             "::1/tcp": "ok", "::1/udp": "ok"}
    body = open(r.config).read().replace('ip_address_deny = ["any"]\n', "")
    with open(r.config, "w") as f:
        f.write(body.replace('ip_address_allow = ["127.0.0.1", "::1"]', ""))
    assert r.req("reload")["ok"]
    assert r.req("restart", "net")["ok"]
    assert set(r.probed("net", 2).values()) == {"ok"}  # every address, as on the host


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="loading a cgroup program needs root")
def test_a_deny_list_alone_refuses_only_what_it_names(
        restarter: Any, tmp_path: Any, listeners: list[tuple[str, int, str]]) -> None:
    r = restarter(conf(tmp_path, listeners, 'ip_address_deny = ["127.0.0.2/32", "::1"]'))
    r.needs_cgroups("the programs are attached to one")
    r.wait_state("net", "done", timeout=RUN_BOUND)
    assert r.probed("net", 1) == {"127.0.0.1/tcp": "ok", "127.0.0.1/udp": "ok",
                             "127.0.0.2/tcp": "no", "127.0.0.2/udp": "eperm",
                             "::1/tcp": "no", "::1/udp": "eperm"}


@pytest.mark.slow
def test_without_cgroups_the_start_is_refused(restarter: Any, tmp_path: Any) -> None:
    r = restarter(conf(tmp_path, [], 'ip_address_deny = ["any"]\nrestart = "never"'),
                  cgroups=False)
    st = r.wait_state("net", "failed", timeout=RUN_BOUND)
    assert "ip_address_allow / ip_address_deny need the chain's cgroups" in st["reason"], st
