"""`hachain status --cluster`: every node and every singleton, as etcd knows them.

Reads `<prefix>node/` (each node's record, on its lease: it vanishes when the lease
expires) and `<prefix>singleton/` (the ownership keys) from the first member of
`[cluster] endpoints` that answers. Imports the etcd client only when called.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from hachain import channels
from hachain.configtypes import ClusterConfig


async def _gather(cl: ClusterConfig, timeout: float) -> dict[str, Any]:
    import aetcd
    prefix = cl.prefix.rstrip("/") + "/"
    errors = []
    for ep in cl.endpoints:
        host, _, port = ep.rpartition(":")
        client = aetcd.Client(host=host.strip("[]"), port=int(port), timeout=timeout)
        try:
            nodes = await client.get_prefix(f"{prefix}node/".encode())
            keys = await client.get_prefix(f"{prefix}singleton/".encode())
        except Exception as e:  # noqa: BLE001 - try the next member
            errors.append(f"{ep}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        finally:
            try:
                await client.close()
            except Exception:  # noqa: BLE001
                pass
        out: dict[str, Any] = {"endpoint": ep, "nodes": {}, "singletons": {}}
        for kv in nodes:
            rec = node_record(bytes(kv.value))
            if rec is not None:
                out["nodes"][str(rec.get("node"))] = rec
        for kv in keys:
            name = bytes(kv.key).decode(errors="replace")[len(prefix) + len("singleton/"):]
            owner = bytes(kv.value).decode(errors="replace")
            owned = out["nodes"].get(owner, {}).get("owned") or {}
            since = (owned.get(name) or {}).get("since")
            out["singletons"][name] = {"owner": owner, "token": int(kv.mod_revision),
                                       "since": since}
        return out
    return {"error": "; ".join(errors) or "no endpoint"}


def _finite(text: str) -> float | None:
    f = float(text)
    return f if math.isfinite(f) else None


def node_record(raw: bytes) -> dict[str, Any] | None:
    """A node record as `status --cluster` shows it, or None when it is none (not JSON,
    nested too deeply, no object). A number that is not finite is None (the JSON printed
    stays strict), and a field of another shape than a node writes is left out."""
    try:
        rec = channels.loads(raw, parse_constant=lambda _word: None, parse_float=_finite)
    except ValueError:
        return None
    if not isinstance(rec, dict):
        return None
    if not isinstance(rec.get("last_boot"), (dict, type(None))):
        del rec["last_boot"]
    lb = rec.get("last_boot")
    if isinstance(lb, dict) and not isinstance(lb.get("reasons"), (list, type(None))):
        del lb["reasons"]
    owned = rec.get("owned")
    if owned is not None and not (isinstance(owned, dict) and
                                  all(isinstance(o, dict) for o in owned.values())):
        del rec["owned"]
    return rec


def gather(cl: ClusterConfig, timeout: float = 2.0) -> dict[str, Any]:
    return asyncio.run(_gather(cl, timeout))


def _ago(wall: Any, now: float) -> str:
    return f"{now - float(wall):.1f} s ago" if isinstance(wall, (int, float)) else "-"


def print_view(v: dict[str, Any], singletons: list[str]) -> None:
    now = time.time()
    print(f"cluster (etcd {v['endpoint']}):")
    print(f"  {'NODE':<16} {'LEASE':<18} {'RENEWED':<14} {'OWNS':<24} LAST BOOT")
    for name in sorted(v["nodes"]):
        n = v["nodes"][name]
        lb = n.get("last_boot") or {}
        boot = str(lb.get("cause") or "-")
        if lb.get("reasons"):
            boot += ": " + "; ".join(map(str, lb["reasons"]))
        owns = ", ".join(sorted(n.get("owned") or {})) or "-"
        lease = f"{n['lease']:x}" if isinstance(n.get("lease"), int) else "-"
        print(f"  {name:<16} {lease:<18} {_ago(n.get('renewed_wall'), now):<14} "
              f"{owns:<24} {boot}")
    print(f"  {'SINGLETON':<16} {'OWNER':<16} {'TOKEN':<8} SINCE")
    for name in sorted(set(v["singletons"]) | set(singletons)):
        s = v["singletons"].get(name)
        if s is None:
            print(f"  {name:<16} {'(none)':<16} {'-':<8} -")
        else:
            print(f"  {name:<16} {s['owner']:<16} {s['token']:<8} {_ago(s['since'], now)}")


async def _move(cl: ClusterConfig, name: str, node: str, timeout: float) -> tuple[int, str]:
    """Ask the owner of `name` to hand it to `node`; wait until `node` holds it."""
    import aetcd
    prefix = cl.prefix.rstrip("/") + "/"
    key = f"{prefix}singleton/{name}".encode()
    last = ""
    for ep in cl.endpoints:
        host, _, port = ep.rpartition(":")
        client = aetcd.Client(host=host.strip("[]"), port=int(port), timeout=2)
        try:
            if await client.get(f"{prefix}node/{node}".encode()) is None:
                return 1, f"no live node named {node!r} (its lease is not held)"
            got = await client.get(key)
            if got is not None and bytes(got.value).decode() == node:
                return 0, f"{name} already runs on {node} (token {got.mod_revision})"
            # the request lives on a short lease: a move that cannot finish is forgotten
            lease = await client.lease(int(max(5, timeout)))
            await client.put(f"{prefix}move/{name}".encode(), node.encode(), lease=lease.id)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                got = await client.get(key)
                if got is not None and bytes(got.value).decode() == node:
                    await client.revoke_lease(lease.id)
                    return 0, f"{name} moved to {node} (token {got.mod_revision})"
                await asyncio.sleep(0.1)
            await client.revoke_lease(lease.id)
            return 1, f"{name} did not move to {node} within {timeout:g} s (request withdrawn)"
        except Exception as e:  # noqa: BLE001 - try the next member
            last = f"{ep}: {type(e).__name__}"
            continue
        finally:
            try:
                await client.close()
            except Exception:  # noqa: BLE001
                pass
    return 1, f"cannot reach etcd: {last or 'no endpoint'}"


def move(cl: ClusterConfig, name: str, node: str, timeout: float = 30.0) -> tuple[int, str]:
    return asyncio.run(_move(cl, name, node, timeout))
