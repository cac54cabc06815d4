#!/usr/bin/env bash
# Installs what hachain needs on a fresh Debian machine: the Debian packages the tests
# and the QEMU proof use, a virtual environment in .venv, and hachain into it (editable).
# Idempotent: a second run installs nothing new. Prints one line per step.
set -euo pipefail
cd "$(dirname "$0")/.."

want_debs=(util-linux procps)
if [ "${1:-}" = "--test" ]; then
    # the QEMU proof, systemd-notify (a real sd_notify client), what systemd-python
    # (the optional `systemd` extra, tested too) builds against, the C stamp service of
    # the benchmarks, the peers bench/compare.py measures beside hachain (its smoke run is
    # a test), and cpio to list the initramfs the QEMU harness writes
    want_debs+=(qemu-system-x86 linux-image-amd64 busybox-static systemd libsystemd-dev
                pkg-config gcc libc6-dev s6 runit supervisor cpio)
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
        apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: warning: missing Debian packages (${missing[*]}); install them with apt-get as root" >&2
    fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
stamp=.venv/.hachain-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing hachain and its test tools into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    touch "$stamp"
fi
