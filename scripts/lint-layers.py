#!/usr/bin/python3
"""make lint: folders under src/ are layers, and a lower layer never includes an upper one.

Layers, lowest first (README, Layout): core, model, store, exec, service, worker,
http and cli, then the program itself (src/main.c, src/serve.c). A file may include its
own layer and those below. A store backend (store/sqlite/, store/pg/) is included by no
file outside it. And no two modules include each other, directly or round a cycle.
Prints each violation; exits 1 if there is any."""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
RANK = {"core": 0, "model": 1, "store": 2, "exec": 3, "service": 4, "worker": 5,
        "http": 6, "cli": 6, "": 7}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def layer(path):
    top = path.split("/")[0] if "/" in path else ""
    if top not in RANK:
        raise SystemExit(f"lint: {path} is in no known layer (add its folder to RANK)")
    return top


def main():
    files = {}
    for d, _, names in os.walk(ROOT):
        for n in names:
            if n.endswith((".c", ".h")):
                rel = os.path.relpath(os.path.join(d, n), ROOT)
                with open(os.path.join(d, n)) as f:
                    files[rel] = INCLUDE.findall(f.read())
    problems = []
    graph = {}
    for rel, incs in sorted(files.items()):
        me = layer(rel)
        mod = rel.rsplit(".", 1)[0]
        for inc in incs:
            if inc not in files:
                continue            # generated or system-like
            them = layer(inc)
            if RANK[them] > RANK[me]:
                problems.append(f"{rel}: includes {inc} ({them} is above {me or 'the program'})")
            backend = inc.split("/")[:2]
            if inc.startswith("store/") and len(backend) == 2 and backend[1] in ("sqlite", "pg") \
                    and not rel.startswith("/".join(backend) + "/"):
                problems.append(f"{rel}: includes {inc}, a store backend's own header")
            other = inc.rsplit(".", 1)[0]
            if other != mod:
                graph.setdefault(mod, set()).add(other)
    # cycles between modules (a module is a .c and its .h)
    seen, stack, on = set(), [], set()

    def visit(m):
        seen.add(m)
        stack.append(m)
        on.add(m)
        for n in sorted(graph.get(m, ())):
            if n in on:
                cyc = stack[stack.index(n):] + [n]
                problems.append("include cycle: " + " -> ".join(cyc))
            elif n not in seen:
                visit(n)
        stack.pop()
        on.discard(m)

    for m in sorted(graph):
        if m not in seen:
            visit(m)
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
