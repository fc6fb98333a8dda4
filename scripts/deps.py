#!/usr/bin/env python3
"""readback's module graph and its layering rules.

usage: scripts/deps.py [SRC_DIR] [--check] [--edges]

Reads every file under src/ (default: the src/ next to this script), finds
which files each one uses (`crate::...` and `super::...` paths, in `use`
statements or inline; `#[cfg(test)]` modules are ignored) and prints:

- each file with its layer and what it depends on (`--edges`);
- every dependency that points *up* the layers, every import cycle, and
  every service, store or domain file that mentions `AppState`;
- a summary line.

With `--check` it exits 1 when there is any of those (tests/architecture.rs
runs it so). The layers, lowest first — a file may use files of its own
layer or below, never above:

  0 leaf      config, auth, clock, validation, severity, metrics,
              telemetry, transport_security, limits, realtime/rooms,
              client_addr; the primitives among them (all but auth and
              telemetry, which read config) use only each other
  1 domain    the vocabulary and rules of each concept: notifications,
              sessions, escalation, audit (mod.rs files), audit/checkpoint;
              the socket facade the services use (realtime/hub.rs)
  2 store     SQL per table group, the group commit
  3 service   the error type, the services (notifications, sessions,
              escalation, the outbox sender, audit review), the scheduler,
              the figures read from the database for the metrics (monitoring.rs),
              the calendar jobs (jobs/),
              the systemd supervisor, the JWKS fetcher, socketioxide behind the hub
              (realtime/socketio.rs) and realtime/{mod,topics,messages}.rs
  4 edge      http/*, realtime/handlers.rs, the shared handler state, signals
  5 root      app.rs (the composition root), lib.rs, main.rs

A new file must be given a layer here: the script names it until it is.
"""

import os
import re
import sys

LAYERS = {
    "config.rs": 0, "auth.rs": 0, "clock.rs": 0, "validation.rs": 0,
    "severity.rs": 0, "metrics.rs": 0, "telemetry.rs": 0, "limits.rs": 0,
    "realtime/rooms.rs": 0, "realtime/events.rs": 0, "transport_security.rs": 0,
    "client_addr.rs": 0,
    "realtime/hub.rs": 1,
    "notifications/mod.rs": 1, "sessions/mod.rs": 1, "escalation/mod.rs": 1,
    "audit/mod.rs": 1, "audit/checkpoint.rs": 1,
    "store/": 2,
    "error.rs": 3, "notifications/service.rs": 3, "sessions/service.rs": 3,
    "escalation/service.rs": 3, "escalation/mailer.rs": 3,
    "audit/review.rs": 3, "audit/refusals.rs": 3, "audit/reads.rs": 3, "audit/window.rs": 3, "scheduler.rs": 3, "jobs/": 3, "supervisor.rs": 3,
    "monitoring.rs": 3,
    "jwks.rs": 3,
    "realtime/mod.rs": 3, "realtime/socketio.rs": 3, "realtime/topics.rs": 3, "realtime/messages.rs": 3,
    "http/": 4, "realtime/handlers.rs": 4, "realtime/cluster.rs": 4, "state.rs": 4, "shutdown.rs": 4,
    "app.rs": 5, "lib.rs": 5, "main.rs": 5,
}
NAMES = ["leaf", "domain", "store", "service", "edge", "root"]
# The primitives: they may use each other and nothing else of readback's.
ISOLATED = {"config.rs", "clock.rs", "validation.rs", "severity.rs", "realtime/events.rs",
            "metrics.rs", "realtime/rooms.rs", "transport_security.rs", "client_addr.rs", "limits.rs"}


def layer_of(rel):
    if rel in LAYERS:
        return LAYERS[rel]
    for prefix, layer in LAYERS.items():
        if prefix.endswith("/") and rel.startswith(prefix):
            return layer
    return None


def module_files(src):
    """module path (tuple) -> file path relative to src."""
    files = {}
    for root, _, names in os.walk(src):
        for name in names:
            if not name.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(root, name), src).replace(os.sep, "/")
            parts = rel[:-3].split("/")
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]):
                parts = [parts[0]]
            files[tuple(parts)] = rel
    return files


def use_paths(text):
    """Every `crate::…`/`super::…` path, with `use` groups expanded."""
    paths = []

    def expand(prefix, tree):
        depth, item = 0, ""
        for ch in tree + ",":
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                item = item.strip()
                if item:
                    group = re.match(r"^([\w:]*?)(?:::)?\{(.*)\}$", item, re.S)
                    if group:
                        head = [s for s in group.group(1).split("::") if s]
                        expand(prefix + head, group.group(2))
                    else:
                        name = item.split(" as ")[0].strip()
                        paths.append(prefix + [s for s in name.split("::") if s])
                item = ""
            else:
                item += ch

    for statement in re.findall(r"\buse\s+((?:crate|super)\b[^;]*);", text, re.S):
        expand([], statement)
    for inline in re.findall(r"\b((?:crate|super)(?:::\w+)+)", text):
        paths.append(inline.split("::"))
    return paths


def graph(src):
    files = module_files(src)
    edges = {rel: set() for rel in files.values()}
    mentions_state = set()
    for module, rel in files.items():
        text = open(os.path.join(src, rel), encoding="utf-8").read()
        text = re.sub(r"#\[cfg\(test\)\]\s*mod \w+\s*\{.*", "", text, flags=re.S)
        code = re.sub(r"//[^\n]*", "", text)
        if re.search(r"\bAppState\b", code):
            mentions_state.add(rel)
        here = list(module) if rel.endswith("mod.rs") else list(module[:-1])
        for path in use_paths(code):
            if path[0] == "crate":
                base, rest = [], path[1:]
            else:
                base, rest = list(here), list(path)
                while rest and rest[0] == "super":
                    rest = rest[1:]
                    if rest and rest[0] == "super":
                        base = base[:-1]
            full = base + rest
            for n in range(len(full), 0, -1):
                target = files.get(tuple(full[:n]))
                if target is not None:
                    if target != rel and target not in ("lib.rs", "main.rs"):
                        edges[rel].add(target)
                    break
    return edges, mentions_state


def cycles(edges):
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    src = args[0] if args else os.path.join(os.path.dirname(__file__), "..", "src")
    edges, mentions_state = graph(src)
    problems = []
    for rel in sorted(edges):
        if layer_of(rel) is None:
            problems.append(f"{rel}: no layer; give it one in scripts/deps.py")
    for rel in sorted(edges):
        mine = layer_of(rel)
        if mine is None:
            continue
        for target in sorted(edges[rel]):
            theirs = layer_of(target)
            if rel in ISOLATED and target not in ISOLATED:
                problems.append(
                    f"{rel} -> {target}: {rel} may use only the other primitives "
                    f"({', '.join(sorted(ISOLATED - {rel}))})")
            elif theirs is not None and theirs > mine:
                problems.append(
                    f"{rel} ({NAMES[mine]}) -> {target} ({NAMES[theirs]}): points up the layers")
    for rel in sorted(mentions_state):
        layer = layer_of(rel)
        if layer is not None and layer <= 3:
            problems.append(f"{rel} ({NAMES[layer]}) mentions AppState: take the narrow things it uses")
    found = cycles(edges)
    for component in found:
        problems.append(f"cycle of {len(component)} files: {', '.join(component)}")
    if "--edges" in sys.argv:
        for rel in sorted(edges, key=lambda r: (layer_of(r) if layer_of(r) is not None else 9, r)):
            layer = layer_of(rel)
            name = NAMES[layer] if layer is not None else "?"
            print(f"[{name:7}] {rel} -> {', '.join(sorted(edges[rel])) or '(nothing)'}")
    for problem in problems:
        print(problem)
    print(f"{len(edges)} files, {sum(len(v) for v in edges.values())} dependencies, "
          f"{len(found)} cycles, {len(problems)} problems")
    if "--check" in sys.argv and problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
