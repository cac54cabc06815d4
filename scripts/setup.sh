#!/usr/bin/env bash
# Installs what hachain needs on a fresh Debian machine: the Debian packages the tests
# and the QEMU proof use, a virtual environment in .venv, and hachain into it (editable).
# Idempotent: a second run installs nothing new. Prints one line per step.
set -euo pipefail
cd "$(dirname "$0")/.."

# gcc and libc6-dev build hachain's two optional C parts (setup.py): the native front of
# `hachain status` and the restarter's clone3 spawn; without them both work, slower.
# libseccomp2 compiles a service's system_call_filter and its kin (hachain/seccomp.py)
want_debs=(util-linux procps gcc libc6-dev libseccomp2)
if [ "${1:-}" = "--test" ]; then
    # the QEMU proof, systemd-notify (a real sd_notify client), what systemd-python
    # (the optional `systemd` extra, tested too) builds against, the C stamp service of
    # the benchmarks, the peers bench/compare.py measures beside hachain (its smoke run is
    # a test), cpio to list the initramfs the QEMU harness writes, and the real daemons
    # tests/test_daemons.py supervises (their packages must not start them: see below),
    # and etcd for the cluster tests (tests/test_cluster.py runs its own members; the
    # package's system etcd must not start either), and chromium, in which
    # tests/test_chaos_output.py looks at the campaign's HTML report (a headless screenshot),
    # and dbus-daemon, which tests/test_listen.py runs on sockets the restarter holds
    want_debs+=(qemu-system-x86 linux-image-amd64 busybox-static systemd libsystemd-dev
                pkg-config s6 runit supervisor cpio
                postgresql redis-server nginx-light openssh-server etcd-server chromium
                dbus-daemon dbus-bin)
fi
missing=()
for p in "${want_debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        # A daemon's postinst starts its system service (invoke-rc.d, deb-systemd-invoke)
        # unless policy-rc.d says no (exit 101). The tests run their own copies on free
        # ports; nothing may keep running after set-up. Our policy-rc.d is removed again.
        own_policy=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\n# hachain setup.sh: start no service while installing\nexit 101\n' \
                > /usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
            own_policy=1
        fi
        rc=0
        apt-get install -y -qq "${missing[@]}" >/dev/null || rc=$?
        [ -n "$own_policy" ] && rm -f /usr/sbin/policy-rc.d
        [ "$rc" = 0 ] || exit "$rc"
    else
        echo "setup: warning: missing Debian packages (${missing[*]}); install them with apt-get as root" >&2
    fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
# The demo needs hachain alone; the tests need the `test` extra too, and one of its
# packages (systemd-python) builds against libsystemd-dev, which only --test installs.
# Each kind of install has its stamp; an up-to-date test install covers the plain one.
# setup.py builds the C parts in place (hachain/restarter/_clone3.c, hachain/_front.c,
# hachain/watchdog/_tick.c, and hachain/_record.h, which the first and last share):
# a change to any of them, or to pyproject.toml, installs again.
fresh() {
    [ -f "$1" ] && ! [ pyproject.toml -nt "$1" ] && ! [ setup.py -nt "$1" ] &&
        ! [ hachain/restarter/_clone3.c -nt "$1" ] && ! [ hachain/_front.c -nt "$1" ] &&
        ! [ hachain/watchdog/_tick.c -nt "$1" ] && ! [ hachain/_record.h -nt "$1" ]
}
test_stamp=.venv/.hachain-installed-test
if [ "${1:-}" = "--test" ]; then
    spec='.[test]' stamp=$test_stamp what="hachain and its test tools"
else
    spec='.' stamp=.venv/.hachain-installed what="hachain"
fi
# The editable install is setuptools' "compat" kind: one line in a .pth file that puts
# this checkout on sys.path. Its default kind installs an import finder instead, which
# every Python start with `site` imports (pathlib, importlib.util, urllib.parse): 20 ms
# more for every `hachain` command and for `hachain run` before it becomes init
# (docs/benchmarks.md, thirty-first session). An install of that kind, from an older
# setup.sh, is replaced.
finder() { compgen -G '.venv/lib/python3*/site-packages/__editable___hachain_*_finder.py' >/dev/null; }
if finder || { ! fresh "$stamp" && ! { [ "$spec" = . ] && fresh "$test_stamp"; }; }; then
    echo "setup: installing $what into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e "$spec" \
        --config-settings editable_mode=compat
    touch "$stamp"
fi
# The native front answers `hachain status` without starting Python (hachain/_front.c);
# it hands everything else to the Python CLI, bin/hachain-py. pip writes bin/hachain as
# the Python CLI too: put the front in its place whenever pip has (or it is older).
if [ -x hachain/_front ] && { ! cmp -s hachain/_front .venv/bin/hachain; }; then
    install -m 755 hachain/_front .venv/bin/hachain
fi
# Byte-compile hachain as an installed package is (pip compiles at install time): with
# PYTHONDONTWRITEBYTECODE=1 (CI and sandbox environments set it) nothing else writes the
# .pyc files, and every layer the chain or a test starts would compile its modules
# again, ~0.3 s of CPU each. Up-to-date files are skipped; a changed source is compiled
# again here, and Python ignores a stale .pyc anyway.
.venv/bin/python -m compileall -q -j 0 hachain >/dev/null
# The same for the methods dataclasses generates: compiled once here, not at every start
# of a layer (hachain/classcache.py; 50-60 ms of the restarter's start otherwise).
.venv/bin/python -m hachain.classcache >/dev/null ||
    echo "setup.sh: warning: the dataclass methods were not compiled ahead (each layer compiles its own)" >&2
