#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a cycle.

Reads every `crate::...` path in the crate's source files (in `use` declarations, braced groups
included, and inline paths), and builds two graphs: between the crate's top-level modules, and
between sibling modules inside each of them (a reference to the parent's own `mod.rs`, such as a
re-export, is not an edge). Prints the edges with --print.

    scripts/module-graph.py [--print] [crates/server/src]
"""

import re
import sys
from collections import defaultdict
from pathlib import Path


def module_of(root: Path, path: Path) -> tuple:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts.pop()
    return tuple(parts)


def expand(prefix: str, body: str) -> list:
    """Expands `a::{b, c::{d, e}}` into full paths."""
    paths, depth, start = [], 0, 0
    items = []
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(body[start:i])
            start = i + 1
    items.append(body[start:])
    for item in (x.strip() for x in items):
        if not item:
            continue
        m = re.match(r"^([\w:]*?)::\{(.*)\}$", item, re.S)
        if m:
            paths += expand(f"{prefix}{m.group(1)}::", m.group(2))
        else:
            paths.append(prefix + item.split(" as ")[0].strip())
    return paths


def crate_paths(text: str) -> list:
    text = re.sub(r"//[^\n]*", "", text)
    paths = []
    for m in re.finditer(r"\buse\s+crate::\{(.*?)\};", text, re.S):
        paths += expand("", m.group(1))
    text = re.sub(r"\buse\s+crate::\{.*?\};", "", text, flags=re.S)
    for m in re.finditer(r"\bcrate::([\w:]+)(::\{(.*?)\})?", text, re.S):
        if m.group(3) is not None:
            paths += expand(m.group(1) + "::", m.group(3))
        else:
            paths.append(m.group(1))
    return [[s for s in p.split("::") if s] for p in paths]


def find_cycle(edges: dict):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--print"]
    root = Path(args[0] if args else "crates/server/src")
    top = defaultdict(set)
    inner = defaultdict(lambda: defaultdict(set))
    for path in sorted(root.rglob("*.rs")):
        module = module_of(root, path)
        if not module:
            continue  # lib.rs: the crate root only re-exports
        for target in crate_paths(path.read_text()):
            if not target:
                continue
            if target[0] != module[0]:
                top[module[0]].add(target[0])
            elif len(module) > 1 and len(target) > 1 and target[1] != module[1]:
                # A sibling inside the same top-level module, when the target names a module.
                if (root / module[0] / f"{target[1]}.rs").exists() or (
                    root / module[0] / target[1]
                ).is_dir():
                    inner[module[0]][module[1]].add(target[1])
    if "--print" in sys.argv:
        for a in sorted(top):
            print(f"{a} -> {', '.join(sorted(top[a]))}")
        for parent in sorted(inner):
            for a in sorted(inner[parent]):
                print(f"{parent}::{a} -> {', '.join(sorted(inner[parent][a]))}")
    failed = False
    for name, graph in [("crate", top)] + [(p, g) for p, g in sorted(inner.items())]:
        cycle = find_cycle(graph)
        if cycle:
            print(f"import cycle in {root} ({name}): {' -> '.join(cycle)}", file=sys.stderr)
            failed = True
    if not failed:
        print(f"{root}: no import cycles between modules")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
