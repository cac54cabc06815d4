"""Persisted state on a full disk (issue 20.2): every write is retried until made, admin.json
beats a runtime record, and a write that cannot be made shows in `hachain status`.

The disk is a real tmpfs of a few hundred KiB mounted in the test's temp dir and filled up
with a file; it is unmounted in every case."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from hachain import channels
from hachain.restarter.persist import RESERVE, RESERVE_BYTES, RuntimeRecord, Store, WriteQueue
from tests.conftest import KILLED_BOUND, RestarterRun, svc, wait_until

HEARTBEAT = 0.2  # the restarter's heartbeat_interval in these tests (RestarterRun's)


class SmallDisk:
    """A tmpfs of `size` mounted at `path`; `fill()` takes every free byte, `free()`
    gives them back."""

    def __init__(self, path: str, size: str = "512k") -> None:
        self.path = path
        os.makedirs(path)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                            path], capture_output=True, text=True, timeout=10)
        if r.returncode != 0:
            reason = f"cannot mount a tmpfs (needs root): {r.stderr.strip()}"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        self.filler = os.path.join(path, "fill")

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            block = b"\0" * 4096
            while True:
                try:
                    os.write(fd, block)
                except OSError:
                    break
            for size in (512, 64, 1):  # the last partial page too
                while True:
                    try:
                        os.write(fd, block[:size])
                    except OSError:
                        break
        finally:
            os.close(fd)
        with pytest.raises(OSError):
            with open(os.path.join(self.path, "probe"), "wb") as f:
                f.write(b"x" * 4096)
                f.flush()

    def free(self) -> None:
        for name in ("fill", "probe"):
            try:
                os.unlink(os.path.join(self.path, name))
            except FileNotFoundError:
                pass

    def unmount(self) -> None:
        r = subprocess.run(["umount", self.path], capture_output=True, timeout=10)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", self.path], capture_output=True, timeout=10)


@pytest.fixture
def small_disk(tmp_path: Any) -> Iterator[SmallDisk]:
    d = SmallDisk(str(tmp_path / "disk"))
    try:
        yield d
    finally:
        d.unmount()


# --- the write queue on its own ------------------------------------------------------------

def test_queue_retries_until_written_newest_content_wins(small_disk: SmallDisk) -> None:
    d = os.path.join(small_disk.path, "d")
    os.makedirs(d)
    q = WriteQueue()
    a, b = os.path.join(d, "a"), os.path.join(d, "b")
    small_disk.fill()
    q.put(a, b"a1" * 3000, 0.0)
    q.put(b, b"b1" * 3000, 0.0)
    msgs = q.sync(1.0)
    assert len(msgs) == 1 and "No space left on device" in msgs[0] and "2 write(s)" in msgs[0]
    assert list(q.pending) == [a, b]  # nothing written, order kept
    assert not os.path.exists(a) and not os.path.exists(b)
    q.put(a, b"a2" * 3000, 2.0)  # coalesced: one entry, the newest content, same place
    assert list(q.pending) == [a, b] and q.pending[a].since == 0.0
    assert q.sync(3.0) == []  # still failing: no new line
    small_disk.free()
    msgs = q.sync(4.0)
    assert msgs == [f"pending writes in {d} made after 3.0 s"]
    assert not q.pending
    assert open(a, "rb").read() == b"a2" * 3000 and open(b, "rb").read() == b"b1" * 3000


def test_queued_removal_wins_over_an_older_queued_write(small_disk: SmallDisk) -> None:
    d = os.path.join(small_disk.path, "d")
    os.makedirs(d)
    q = WriteQueue()
    a = os.path.join(d, "a")
    with open(a, "w") as f:
        f.write("old")
    small_disk.fill()
    q.put(a, b"new" * 3000, 0.0)
    q.sync(1.0)
    assert open(a).read() == "old"
    q.put(a, None, 2.0)  # removing needs no space: done at once, the write never happens
    q.sync(3.0)
    assert not os.path.exists(a) and not q.pending


def drop_reserves(state_dir: str, persist_dir: str) -> None:
    """Take away the reserve space of both directories (as if something else had used
    it up), so that writes on the full disk have to wait in the queue."""
    for d in (os.path.join(state_dir, "services"), persist_dir):
        os.unlink(os.path.join(d, RESERVE))


def test_store_status_entries_name_file_age_and_error(small_disk: SmallDisk) -> None:
    st = Store(os.path.join(small_disk.path, "run"), os.path.join(small_disk.path, "persist"))
    drop_reserves(st.state_dir, st.persist_dir)
    small_disk.fill()
    st.write_admin({"b": {"want": "down"}}, 10.0)
    st.write_record(RuntimeRecord("a", 1, 2, "ready", "up", 0.0, 0, None), 10.0)
    # the record is not tried yet (the loop's flush does it); admin.json may have been
    # already, by its writer thread
    assert [u["file"] for u in st.unwritten(10.0)] in ([], ["admin.json"])
    st.sync(11.0)  # (and waits for the persist writer's try of admin.json)
    u = st.unwritten(22.0)
    assert [(x["file"], x["since"], x["error"]) for x in u] == [
        ("services/a.json", 12.0, "No space left on device"),
        ("admin.json", 12.0, "No space left on device")]
    st.write_admin({"b": {"want": "down"}}, 23.0)  # the same content: nothing new queued
    assert len(st.queue.pending) == 1 and st.durable.asked == 1
    small_disk.free()
    st.sync(24.0)  # the records here; admin.json by the writer's next try (RETRY)
    wait_until(lambda: st.unwritten(24.0) == [], 30, "admin.json written")
    assert st.read_admin() == {"b": {"want": "down"}}
    st.close(5)


def test_full_disk_writes_go_through_the_reserve_at_no_cost(small_disk: SmallDisk) -> None:
    logged: list[str] = []  # the persist writer's lines (admin.json is its)
    st = Store(os.path.join(small_disk.path, "run"), os.path.join(small_disk.path, "persist"),
               log=logged.append)
    reserves = [os.path.join(st.rec_dir, RESERVE), os.path.join(st.persist_dir, RESERVE)]
    rec = RuntimeRecord("a", 1, 2, "ready", "up", 0.0, 0, None)
    st.write_record(rec, 0.0)
    st.write_admin({"b": {"want": "down"}}, 0.0)
    assert st.sync(0.0) == []
    small_disk.fill()
    for i in range(20):  # each rewrite frees what it takes: the reserve stays whole
        st.write_record(replace(rec, pid=100 + i), 1.0)
        st.write_admin({"b": {"want": "down"}, f"c{i}": {"want": "down"}}, 1.0)
        msgs = st.sync(1.0)
        assert not st.queue.pending and st.unwritten(1.0) == []
        assert [os.stat(r).st_size for r in reserves] == [RESERVE_BYTES] * 2
        if i == 0:
            assert len(msgs) == 1 and "writing into its reserve space" in msgs[0], msgs
            assert len(logged) == 1 and "writing into its reserve space" in logged[0], \
                logged
    assert st.read_record("a").pid == 119  # type: ignore[union-attr]
    assert st.read_admin() == {"b": {"want": "down"}, "c19": {"want": "down"}}
    with pytest.raises(OSError):  # and the disk is still full
        with open(os.path.join(small_disk.path, "probe"), "wb") as f:
            f.write(b"x" * 4096)
            f.flush()
    small_disk.free()
    st.write_record(replace(rec, pid=7), 2.0)
    assert st.sync(2.0) == [f"{st.rec_dir} has room again"]


# --- the restarter on a full disk -----------------------------------------------------------

class FullDiskRun(RestarterRun):
    """A restarter whose state_dir and persist_dir are on the small disk (its own log and
    the services' logs stay on the temp dir, so the services themselves never see the
    full disk)."""

    def __init__(self, tmp: str, disk: SmallDisk, body: str) -> None:
        super().__init__(tmp, body)
        old_state, old_persist = self.state_dir, self.persist_dir
        self.state_dir = os.path.join(disk.path, "run")
        self.persist_dir = os.path.join(disk.path, "persist")
        with open(self.config) as f:
            text = f.read()
        text = text.replace(f'state_dir = "{old_state}"', f'state_dir = "{self.state_dir}"')
        text = text.replace(f'persist_dir = "{old_persist}"',
                            f'persist_dir = "{self.persist_dir}"\n'
                            f'log_dir = "{os.path.join(tmp, "svclog")}"')
        with open(self.config, "w") as f:
            f.write(text)

    def restarter_status(self) -> dict[str, Any]:
        return self.req("status")["restarter"]

    def unwritten(self) -> list[str]:
        return sorted(u["file"] for u in self.restarter_status()["unwritten"])

    def status_text(self) -> str:
        return subprocess.run([sys.executable, "-m", "hachain.cli", "status", "-c", self.config],
                              capture_output=True, text=True, timeout=30).stdout


def starts(path: Any) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.slow
def test_writes_wait_in_the_queue_when_the_reserve_is_gone_and_are_made_later(
        tmp_path: Any, small_disk: SmallDisk) -> None:
    rec_a, rec_b = tmp_path / "starts-a", tmp_path / "starts-b"
    body = (f'[service.a]\ncommand = {svc("record", str(rec_a))}\n'
            f'[service.b]\ncommand = {svc("record", str(rec_b))}\n')
    r = FullDiskRun(str(tmp_path), small_disk, body)
    try:
        r.start()
        r.wait_state("a", "ready")
        first_b = r.wait_state("b", "ready")["pid"]
        wait_until(lambda: len(starts(rec_a)) == 1 and len(starts(rec_b)) == 1, 10,
                   "a and b to record their starts")
        old_a = r.svc("a")["pid"]

        drop_reserves(r.state_dir, r.persist_dir)
        small_disk.fill()
        assert r.req("stop", "b")["ok"]
        r.wait_state("b", "stopped")
        assert r.req("restart", "a")["ok"]
        new_a = wait_until(lambda: (s := r.svc("a"))["state"] == "ready" and
                           s["pid"] != old_a and s["pid"], 10, "a restarted")
        # Nothing of it could be written, and status says so (JSON and text).
        wait_until(lambda: r.unwritten() == ["admin.json", "services/a.json",
                                             "services/b.json"], 10, "three unwritten files")
        u = r.restarter_status()["unwritten"]
        assert all(x["error"] == "No space left on device" for x in u)
        text = r.status_text()
        assert "unwritten: admin.json since " in text and ": No space left on device" in text
        assert json.loads(open(os.path.join(r.state_dir, "services", "a.json")).read())[
            "pid"] == old_a  # still the stale record

        small_disk.free()
        # retried each loop round; an idle restarter has one per heartbeat
        wait_until(lambda: r.unwritten() == [], 25 * HEARTBEAT, "the pending writes made")
        assert "unwritten" not in r.status_text()
        assert json.loads(open(os.path.join(r.state_dir, "services", "a.json")).read())[
            "pid"] == new_a

        r.kill_restarter()
        r.start()
        st = r.wait_state("a", "ready")
        assert st["pid"] == new_a and st["reason"] == "adopted"
        b = r.svc("b")
        assert b["state"] == "stopped" and b["pid"] is None and b["want"] == "down"
        assert starts(rec_a) == [str(old_a), str(new_a)] and starts(rec_b) == [str(first_b)]

        r.stop()  # an orderly stop of the whole restarter (what a chain restart does)
        r.start()
        r.wait_state("a", "ready")
        b = r.svc("b")
        assert b["state"] == "stopped" and b["want"] == "down"
        assert starts(rec_b) == [str(first_b)]
    finally:
        r.cleanup()


def test_operator_stop_in_admin_json_beats_a_running_record(tmp_path: Any,
                                                            small_disk: SmallDisk) -> None:
    """A record naming a live process never overrides a stop in admin.json: the process
    is adopted (not started twice) and then stopped."""
    rec_b = tmp_path / "starts-b"
    r = FullDiskRun(str(tmp_path), small_disk, f'[service.b]\ncommand = '
                    f'{svc("record", str(rec_b))}\n')
    try:
        r.start()
        pid = r.wait_state("b", "ready")["pid"]
        r.kill_restarter()
        with open(os.path.join(r.persist_dir, "admin.json"), "w") as f:
            json.dump({"b": {"want": "down"}}, f)
        r.start()
        r.wait_state("b", "stopped")
        wait_until(lambda: not channels.pid_alive(pid), 10, f"pid {pid} to exit")
        assert starts(rec_b) == [str(pid)]
    finally:
        r.cleanup()


def test_full_disk_loses_nothing_even_across_restarts_while_still_full(
        tmp_path: Any, small_disk: SmallDisk) -> None:
    """With the reserve: stop b and restart a on a full disk; the restarter SIGKILLed and
    then the whole restarter stopped and started, all while the disk is still full: a is
    re-adopted (same pid), b stays stopped and is never started again."""
    rec_a, rec_b = tmp_path / "starts-a", tmp_path / "starts-b"
    body = (f'[service.a]\ncommand = {svc("record", str(rec_a))}\n'
            f'[service.b]\ncommand = {svc("record", str(rec_b))}\n')
    r = FullDiskRun(str(tmp_path), small_disk, body)
    try:
        r.start()
        r.wait_state("a", "ready")
        first_b = r.wait_state("b", "ready")["pid"]
        wait_until(lambda: len(starts(rec_a)) == 1 and len(starts(rec_b)) == 1, 10,
                   "a and b to record their starts")
        old_a = r.svc("a")["pid"]
        small_disk.fill()
        assert r.req("stop", "b")["ok"]
        r.wait_state("b", "stopped")
        assert r.req("restart", "a")["ok"]
        new_a = wait_until(lambda: (s := r.svc("a"))["state"] == "ready" and
                           s["pid"] != old_a and s["pid"], 10, "a restarted")
        assert r.unwritten() == []
        assert "is full (No space left on device): writing into its reserve space" in \
            open(r.log).read()

        r.kill_restarter()
        r.start()
        st = r.wait_state("a", "ready")
        assert st["pid"] == new_a and st["reason"] == "adopted"
        assert r.svc("b")["state"] == "stopped"

        r.stop()
        r.start()
        r.wait_state("a", "ready")
        assert r.svc("b")["state"] == "stopped"
        assert starts(rec_b) == [str(first_b)]
        assert r.unwritten() == []
    finally:
        r.cleanup()


def test_stop_that_finished_while_no_restarter_watched_ends_stopped(restarter: Any,
                                                                   tmp_path: Any) -> None:
    """Stopped by hand, the restarter SIGKILLed while the service was still stopping, the
    service gone by the time a new restarter looks: stopped (what was asked), not failed."""
    mark = tmp_path / "trapped"
    r = restarter('[service.a]\ncommand = ["/bin/sh", "-c", '
                  f'"trap \'\' TERM; touch {mark}; exec sleep 600"]\nstop_timeout = 60\n')
    pid = r.wait_state("a", "ready")["pid"]
    # the stop only once the shell ignores SIGTERM: a stop sent before its trap ran ended
    # it at once (CI, both cores loaded: never "stopping")
    wait_until(mark.exists, 10, "the service's trap")
    assert r.req("stop", "a")["ok"]
    r.wait_state("a", "stopping")
    r.kill_restarter()
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not channels.pid_alive(pid), KILLED_BOUND, f"pid {pid} gone")
    r.start()
    a = r.wait_state("a", "stopped")
    assert a["want"] == "down" and a["pid"] is None
