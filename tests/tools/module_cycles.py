"""Fails when the modules of a crate import each other in a cycle.

usage: module_cycles.py CRATE_SRC_DIR [...]

A module is a top-level module of the crate (`src/<name>.rs` or `src/<name>/`); an edge
A -> B is any `crate::B` path written in A's files (`use crate::B...` or an inline
`crate::B::...`). Submodules of one module (proxy::home -> proxy::route) are not edges.
Prints the edges and exits 1 naming each cycle found (strongly connected components of more
than one module, or a module that imports itself through others).
"""
import os
import re
import sys


def modules(src):
    out = {}
    for name in os.listdir(src):
        path = os.path.join(src, name)
        if name.endswith(".rs") and name not in ("lib.rs", "main.rs"):
            out[name[:-3]] = [path]
        elif os.path.isdir(path):
            files = []
            for root, _, fs in os.walk(path):
                files += [os.path.join(root, f) for f in fs if f.endswith(".rs")]
            out[name] = files
    return out


def edges(mods):
    e = {m: set() for m in mods}
    for m, files in mods.items():
        for f in files:
            text = open(f, encoding="utf-8").read()
            # Drop comments and the unit tests at the bottom of a file.
            text = re.sub(r"//[^\n]*", "", text)
            text = text.split("#[cfg(test)]")[0]
            for target in re.findall(r"crate::(\w+)", text):
                if target in mods and target != m:
                    e[m].add(target)
            # `use crate::{a, b::c}` groups
            for group in re.findall(r"crate::\{([^}]*)\}", text):
                for target in re.findall(r"(?:^|,)\s*(\w+)", group):
                    if target in mods and target != m:
                        e[m].add(target)
    return e


def cycles(e):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in e[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in e:
        if v not in index:
            visit(v)
    return out


def main():
    failed = False
    for src in sys.argv[1:]:
        mods = modules(src)
        e = edges(mods)
        found = cycles(e)
        n = sum(len(t) for t in e.values())
        if found:
            failed = True
            for c in found:
                print(f"{src}: import cycle among modules {', '.join(c)}")
        else:
            print(f"{src}: {len(mods)} modules, {n} import edges, no cycle")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
