"""The dependency graph: pure functions over {name: (names it orders itself after)}.

Owns: cycle detection, start order, dependents. Must not: touch the OS or read config
files. Edges point from a service to what it needs first (requires, wants, after).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def find_cycle(deps: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One dependency cycle as a list of names (first repeated implicitly), or None."""
    color: dict[str, int] = {}  # 0/absent white, 1 grey (on stack), 2 black
    for root in sorted(deps):
        if color.get(root):
            continue
        stack: list[tuple[str, list[str]]] = [(root, sorted(deps.get(root, ())))]
        path = [root]
        color[root] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                color[node] = 2
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop(0)
            c = color.get(nxt, 0)
            if c == 1:
                return path[path.index(nxt):]
            if c == 0 and nxt in deps:
                color[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(deps.get(nxt, ()))))
    return None


def start_levels(deps: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Names grouped by depth: level 0 needs nothing, level k only lower levels.

    Services of one level are independent and may start in parallel. Assumes no cycle.
    """
    depth: dict[str, int] = {}

    def level(n: str) -> int:
        if n in depth:
            return depth[n]
        depth[n] = 0  # guards against a cycle: treated as level 0
        d = 0
        for m in deps.get(n, ()):
            if m in deps:
                d = max(d, level(m) + 1)
        depth[n] = d
        return d

    for n in deps:
        level(n)
    out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for n in sorted(depth):
        out[depth[n]].append(n)
    return out


def reverse(deps: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """{name: [names that depend on it directly]}."""
    rev: dict[str, list[str]] = {n: [] for n in deps}
    for n, ds in deps.items():
        for d in ds:
            rev.setdefault(d, []).append(n)
    for v in rev.values():
        v.sort()
    return rev


def dependents(rev: Mapping[str, Iterable[str]], name: str) -> list[str]:
    """Every service that depends on `name`, directly or not, in breadth-first order."""
    seen: dict[str, None] = {}
    frontier = list(rev.get(name, ()))
    while frontier:
        n = frontier.pop(0)
        if n in seen or n == name:
            continue
        seen[n] = None
        frontier.extend(rev.get(n, ()))
    return list(seen)
