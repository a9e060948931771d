#!/usr/bin/env python3
"""Fails if the modules under src/ import each other in a circle.

A module is a top-level module of the crate (src/NAME.rs or src/NAME/);
an edge A -> B is any `crate::B` path in A's code (comments and doc
comments are not code). The data path dictates the direction: protocol
codecs at the bottom, the gateway and config at the top. Prints the layers
it found, bottom first, or every circle and exits 1.
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src")


def module_of(rel):
    top = rel.split(os.sep)[0]
    return top[:-3] if top.endswith(".rs") else top


def code(text):
    # Drop line comments (doc comments included) and string literals'
    # contents, so prose that names a module is not an edge.
    text = re.sub(r'"(\\.|[^"\\])*"', '""', text)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def graph():
    edges = {}
    for root, _, files in os.walk(SRC):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            module = module_of(os.path.relpath(path, SRC))
            if module in ("lib", "main"):
                continue
            deps = edges.setdefault(module, set())
            text = code(open(path, encoding="utf-8").read())
            for m in re.finditer(r"\bcrate::(\w+)", text):
                deps.add(m.group(1))
            # `use crate::{a::x, b};`
            for group in re.finditer(r"\buse\s+crate::\{(.*?)\};", text, re.S):
                depth, token = 0, ""
                for ch in group.group(1) + ",":
                    if ch == "{":
                        depth += 1
                    elif ch == "}":
                        depth -= 1
                    elif ch == "," and depth == 0:
                        head = re.match(r"\s*(\w+)", token)
                        if head:
                            deps.add(head.group(1))
                        token = ""
                        continue
                    token += ch
    for module, deps in edges.items():
        deps.discard(module)
        deps.intersection_update(edges.keys())
    return edges


def cycles(edges):
    """Tarjan's strongly connected components larger than one module."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    edges = graph()
    found = cycles(edges)
    if found:
        for comp in found:
            print("module cycle:", " <-> ".join(comp))
            for a in comp:
                print(f"  {a} -> {', '.join(sorted(d for d in edges[a] if d in comp))}")
        print(f"module-cycles: 0 passed, {len(found)} failed")
        return 1
    layers, placed = [], set()
    while len(placed) < len(edges):
        layer = sorted(m for m in edges if m not in placed and edges[m] <= placed)
        layers.append(layer)
        placed.update(layer)
    for n, layer in enumerate(layers):
        print(f"layer {n}: {' '.join(layer)}")
    print(f"module-cycles: {len(edges)} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
