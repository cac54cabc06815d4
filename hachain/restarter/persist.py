"""The restarter's persisted state: runtime records (for re-adoption) and admin state.

Owns: the formats of `<state_dir>/services/<name>.json` (one small record per service,
rewritten atomically whenever its pid or state changes) and `<persist_dir>/admin.json`
(what an administrator asked for: a service stopped by hand, one held in maintenance;
written durably). Must not: decide anything about them.

A corrupt file is never fatal: it is moved aside as `<file>.corrupt`, a warning is
returned, and the restarter rebuilds from what is actually running.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from hachain import channels


@dataclass(frozen=True)
class RuntimeRecord:
    name: str
    pid: int | None
    start_time: int | None
    state: str
    want: str
    started_mono: float | None
    restarts: int
    cgroup: str | None

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _set_aside(path: str) -> str:
    try:
        os.replace(path, path + ".corrupt")
    except OSError:
        pass
    return f"{path}: corrupt, set aside as {os.path.basename(path)}.corrupt"


class Store:
    def __init__(self, state_dir: str, persist_dir: str) -> None:
        self.rec_dir = os.path.join(state_dir, channels.SERVICE_RECORD_DIR)
        self.admin_path = os.path.join(persist_dir, channels.ADMIN_STATE)
        os.makedirs(self.rec_dir, exist_ok=True)
        os.makedirs(persist_dir, exist_ok=True)
        self.warnings: list[str] = []
        self._admin_written: dict[str, dict[str, str]] | None = None

    def write_record(self, rec: RuntimeRecord) -> None:
        channels.write_json(os.path.join(self.rec_dir, rec.name + ".json"), rec.to_json())

    def read_record(self, name: str) -> RuntimeRecord | None:
        path = os.path.join(self.rec_dir, name + ".json")
        try:
            d = channels.read_json(path)
            if d is None:
                return None
            return RuntimeRecord(
                name=name, pid=d.get("pid"), start_time=d.get("start_time"),
                state=str(d["state"]), want=str(d.get("want", "up")),
                started_mono=d.get("started_mono"), restarts=int(d.get("restarts", 0)),
                cgroup=d.get("cgroup"))
        except (ValueError, KeyError, TypeError, AttributeError):
            self.warnings.append(_set_aside(path))
            return None
        except OSError:
            return None

    def drop_record(self, name: str) -> None:
        try:
            os.unlink(os.path.join(self.rec_dir, name + ".json"))
        except OSError:
            pass

    def read_admin(self) -> dict[str, dict[str, str]]:
        """{name: {"want": "down"} or {"want": "up", "maintenance": reason}}."""
        try:
            d = channels.read_json(self.admin_path)
        except ValueError:
            self.warnings.append(_set_aside(self.admin_path))
            return {}
        except OSError:
            return {}
        if d is None:
            return {}
        if not isinstance(d, dict) or not all(isinstance(v, dict) for v in d.values()):
            self.warnings.append(_set_aside(self.admin_path))
            return {}
        self._admin_written = d
        return d

    def write_admin(self, admin: dict[str, dict[str, str]]) -> None:
        """Durably write admin state when it changed. OSError (e.g. ENOSPC) propagates
        and leaves the previous file intact."""
        if admin == self._admin_written:
            return
        channels.write_json(self.admin_path, admin, durable=True)
        self._admin_written = {k: dict(v) for k, v in admin.items()}
