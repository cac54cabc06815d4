"""The fault tables (hachain/simulators/chaos_kinds.py, the QEMU campaign's QKINDS): one row per
kind, the documentation lists the same kinds, the bounds follow the configuration, and
the runners know no kind by name (no if/elif chain on kinds grows back)."""

from __future__ import annotations

import os
import re
import sys

from hachain import config
from hachain.simulators import chaos_kinds, chaos_runner
from hachain.simulators.qemu import campaign

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _doc_rows(heading: str) -> dict[str, list[str]]:
    """{kind: its cells after the name} of the first table after `heading` in
    docs/chaos.md."""
    with open(os.path.join(ROOT, "docs", "chaos.md")) as f:
        text = f.read()
    rows: dict[str, list[str]] = {}
    for line in text[text.index(heading):].splitlines():
        m = re.match(r"^\| `([a-z-]+)` \|(.*)\|$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split(" | ")]
        elif rows and not line.startswith("|"):
            break
    return rows


def test_the_documented_fault_model_is_the_table() -> None:
    assert set(_doc_rows("## The fault model")) == set(chaos_kinds.KINDS)
    guest = _doc_rows("### The guest fault model")
    assert set(guest) == set(campaign.QKINDS)
    for name, k in campaign.QKINDS.items():
        assert {t.strip() for t in guest[name][0].split(",")} == set(k.targets), name
        assert int(guest[name][-1]) == k.weight, name


def _cfg(timeout: int) -> config.Config:
    text = chaos_runner.campaign_config_text(sys.executable, "/x/chaos_svc.py")
    return config.parse(text.replace("timeout = 3\n", f"timeout = {timeout}\n", 1))


def test_bounds_come_from_the_configuration() -> None:
    short, long = _cfg(3), _cfg(13)
    assert chaos_kinds.reboot_bound(long) == chaos_kinds.reboot_bound(short) + 10
    for name, k in chaos_kinds.KINDS.items():
        grows = k.bound_for(long) - k.bound_for(short)
        # a kind that waits for a watchdog reset (or holds for as long) waits 10 s more
        waits = k.reboot == "watchdog" or name == "run-full"
        assert grows == (10 * k.resets if name == "boot-loop" else 10 if waits else 0), name
        assert k.bound_for(short) > 0
    s = campaign.CampaignSettings()
    assert all(k.bound(s) > 0 for k in campaign.QKINDS.values())


def test_every_kind_says_how_its_effect_is_seen_and_what_reboot_it_causes() -> None:
    for name, k in chaos_kinds.KINDS.items():
        assert k.detect is chaos_kinds.rebooted if k.reboot else \
            k.detect is not chaos_kinds.rebooted, name
        assert k.reboot in (None, "watchdog", "panic", "power-cut"), name
        assert k.resets >= 1 and (k.resets == 1 or k.reboot), name


def test_the_runners_know_no_kind_by_name() -> None:
    # a reboot cause ("power-cut") is a word of the machine's boot records, not a kind
    causes = {k.reboot for k in chaos_kinds.KINDS.values()}
    names = (set(chaos_kinds.KINDS) | set(campaign.QKINDS)) - causes
    for module in (chaos_runner, campaign):
        with open(module.__file__ or "") as f:
            src = f.read()
        table = src.find("QKINDS: dict")  # the QEMU module holds its own table: skip it
        if table >= 0:
            src = src[:table] + src[src.index(")}\n", table):]
        named = sorted(n for n in names if re.search(rf"[\"']{re.escape(n)}[\"']", src))
        assert named == [], f"{module.__name__} names fault kinds {named}"
