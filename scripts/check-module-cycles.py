#!/usr/bin/env python3
"""Fails when a Rust module imports, directly or through others, a module that imports it
back (an import circle), in any crate of the workspace.

    scripts/check-module-cycles.py [--verbose]

Each crate's module tree is read from its lib.rs / main.rs by following `mod` lines. An
edge A -> B is an import of something B defines, taken from A's `use` lines and from paths
written in A's code (`crate::x::y`, `super::y`, `self::y`). Re-exports (`pub use`, at any
visibility) only hand names on: they are followed to the module that defines the name and
are no edge of their own, and a `mod` line is no edge (a parent that declares a child does
not depend on it). A child's use of its own ancestors' items (`super::X` defined in the
parent's file) is no edge either: a child module is a part of its parent, and a parent
that splits its work among children (types beside it, `impl` blocks in them) is one
room, not a circle. Between any other modules, siblings included, every import counts.
A module's own `#[cfg(test)]` tests are part of its file; test files under tests/ are
not read.

The server crate (chatixia-core's library) is also checked at the granularity of its
top-level modules (`registry`, `hub`, `pairing`, `auth`, `signaling`, `dashboard`, `ice`,
`shard`, `limits`, `tls`, `server`, `config`, `store_cli`), where a `pub use` of another
top-level module's name counts as an import too:
  * no circle among them;
  * the shard layer (`shard`) imports no other module of the crate, and `limits` only
    `shard`;
  * nothing below `server/` imports `crate::server` (only `config`, which builds the
    server's settings from the flags, and `store_cli` stand above it), and nothing
    below it names `crate::http` (services return typed outcomes; `server/` alone maps
    them to HTTP).

Exit status 1 with every circle and broken rule and the names that tie each; with
`--verbose`, every import edge too.
"""
import os
import re
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = [
    ("chatixia-core (lib)", "src/lib.rs"),
    ("chatixia-core (bin)", "src/main.rs"),
    ("reactor", "reactor/src/lib.rs"),
    ("wire", "wire/src/lib.rs"),
    ("chatixia-store", "store/src/lib.rs"),
    ("chatixia-sidecar (lib)", "sidecar/src/lib.rs"),
    ("chatixia-sidecar (bin)", "sidecar/src/main.rs"),
    ("loadgen", "loadgen/src/lib.rs"),
]

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(text):
    """Blanks out comments, string and char literals (keeps line structure)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 300] or ""):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4] or ""):
            m = re.match(r"'(\\.|[^\\'])'", text[i:])
            out.append("' '")
            i += len(m.group(0))
        elif c == "'" and re.match(r"'\\u\{[0-9a-fA-F]+\}'", text[i:i + 12]):
            m = re.match(r"'\\u\{[0-9a-fA-F]+\}'", text[i:])
            out.append("' '")
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


class Module:
    def __init__(self, path, file, is_dir_owner):
        self.path = path  # tuple of names from the crate root
        self.file = file
        self.is_dir_owner = is_dir_owner  # mod.rs / lib.rs / main.rs: children live beside it
        self.children = {}  # name -> Module (file modules and inline modules)
        self.reexports = {}  # name -> list of path segments (relative to this module)
        self.glob_reexports = []  # list of path segments
        self.code = ""


def child_file(mod, name):
    base = os.path.dirname(mod.file)
    if not mod.is_dir_owner:
        base = os.path.join(base, os.path.splitext(os.path.basename(mod.file))[0])
    for cand, owner in ((os.path.join(base, name + ".rs"), False),
                        (os.path.join(base, name, "mod.rs"), True)):
        if os.path.isfile(cand):
            return cand, owner
    return None, False


def parse_use_tree(s):
    """`a::b::{c, d::e as f, g::*}` -> list of (segments, alias) leaves."""
    s = s.strip()
    m = re.match(r"^(.*?)\{(.*)\}$", s, re.S)
    if m and m.group(1).endswith("::") or (m and m.group(1) == ""):
        prefix = [p for p in m.group(1).strip().rstrip(":").split("::") if p.strip()]
        prefix = [p.strip() for p in prefix]
        inner, depth, cur, parts = m.group(2), 0, "", []
        for ch in inner:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        parts.append(cur)
        leaves = []
        for p in parts:
            if p.strip():
                for segs, alias in parse_use_tree(p):
                    leaves.append((prefix + segs, alias))
        return leaves
    alias = None
    am = re.match(r"^(.*)\s+as\s+(" + IDENT + r")$", s, re.S)
    if am:
        s, alias = am.group(1), am.group(2)
    segs = [p.strip() for p in s.split("::") if p.strip()]
    return [(segs, alias)]


def load_crate(root_file):
    mods = {}

    def load(path, file, owner):
        mod = Module(path, file, owner)
        mods[path] = mod
        text = strip_comments_and_strings(open(file, encoding="utf-8").read())
        read_body(mod, text)
        return mod

    def read_body(mod, text):
        # Inline modules `mod x { ... }` become their own modules (their code is theirs).
        code = []
        i = 0
        for m in re.finditer(r"(?:pub(?:\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*([;{])", text):
            if m.start() < i:
                continue
            name = m.group(1)
            code.append(text[i:m.start()])
            if m.group(2) == ";":
                f, owner = child_file(mod, name)
                if f:
                    mod.children[name] = load(mod.path + (name,), f, owner)
                i = m.end()
            else:
                depth, j = 1, m.end()
                while j < len(text) and depth:
                    depth += {"{": 1, "}": -1}.get(text[j], 0)
                    j += 1
                inline = Module(mod.path + (name,), mod.file, False)
                inline.inline_parent_file = True
                mods[inline.path] = inline
                mod.children[name] = inline
                read_body(inline, text[m.end():j - 1])
                i = j
        code.append(text[i:])
        mod.code = "".join(code)
        for m in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", mod.code):
            for segs, alias in parse_use_tree(m.group(1)):
                if segs and segs[-1] == "*":
                    mod.glob_reexports.append(segs[:-1])
                elif segs:
                    name = alias or segs[-1]
                    if name == "self":
                        name = segs[-2] if len(segs) > 1 else name
                        segs = segs[:-1]
                    mod.reexports[name] = segs

    load((), os.path.join(ROOT, root_file), True)
    return mods


def base_of(mods, here, first):
    """The module a path's first segment starts from, and whether it consumed it."""
    if first == "crate":
        return mods[()], True
    if first == "self":
        return mods[here], True
    if first == "super":
        return mods.get(here[:-1]), True
    m = mods[here]
    if first in m.children:
        return m.children[first], True
    # A name re-exported or a child of the crate root used without `crate::` (2015 style)
    return None, False


def resolve(mods, here, segs, seen=None):
    """The module that defines what `segs` (a path written in module `here`) names."""
    seen = seen or set()
    key = (here, tuple(segs))
    if key in seen or not segs:
        return None
    seen.add(key)
    cur, used = base_of(mods, here, segs[0])
    if cur is None:
        # A name the module imported: `use x::Y;` then `Y::z` — its use line is the edge.
        return None
    rest = segs[1:] if used else segs
    while rest:
        s = rest[0]
        if s == "super":
            cur = mods.get(cur.path[:-1])
            if cur is None:
                return None
            rest = rest[1:]
            continue
        if s in ("self", "*"):
            rest = rest[1:]
            continue
        if s in cur.children:
            cur = cur.children[s]
            rest = rest[1:]
            continue
        if s in cur.reexports:
            target = resolve(mods, cur.path, cur.reexports[s] + rest[1:], seen)
            return target or cur
        for g in cur.glob_reexports:
            t = resolve(mods, cur.path, g + rest, seen)
            if t is not None and t is not cur:
                return t
        return cur
    return cur


def file_of(mod):
    return mod.file


def is_module_path(mods, here, segs):
    """The module `segs` names when every segment is a module (an import of a module
    itself, such as `use crate::hub;`), else None."""
    cur, used = base_of(mods, here, segs[0])
    if cur is None or not used:
        return None
    for s in segs[1:]:
        if s == "super":
            cur = mods.get(cur.path[:-1])
        elif s == "self":
            continue
        elif s in cur.children:
            cur = cur.children[s]
        else:
            return None
        if cur is None:
            return None
    return cur


def edges_of(mods):
    """(from_file, to_file) -> set of names."""
    edges = defaultdict(set)
    for path, mod in mods.items():
        code = mod.code
        private_uses = re.sub(r"\bpub(?:\([^)]*\))?\s+use\s+[^;]+;", " ", code)
        paths = []
        # Modules imported by name (`use crate::hub;`, `use super::ops::{self, Op}`): a
        # path through them in the code (`hub::api::heartbeat`) is resolved from there.
        aliases = {}
        for m in re.finditer(r"\buse\s+([^;]+);", private_uses):
            for segs, alias in parse_use_tree(m.group(1)):
                if segs and segs[-1] == "self":
                    segs = segs[:-1]
                if not segs or segs[-1] == "*":
                    if segs:
                        paths.append(segs)
                    continue
                target = is_module_path(mods, path, segs)
                if target is not None:
                    aliases[alias or segs[-1]] = target
                else:
                    paths.append(segs)
        # Uses also work from a module's other code; the tests module imports `super::*`.
        body = re.sub(r"\buse\s+[^;]+;", " ", private_uses)
        heads = ["crate", "super", "self"] + sorted(set(mod.children) | set(aliases))
        head_re = "|".join(re.escape(h) for h in heads)
        for m in re.finditer(r"(?<![A-Za-z0-9_:])(" + head_re + r")((?:\s*::\s*" + IDENT + r")+)", body):
            segs = [m.group(1)] + [p.strip() for p in m.group(2).split("::") if p.strip()]
            paths.append(segs)
        for segs in paths:
            start = path
            if segs[0] in aliases and segs[0] not in mod.children:
                target_mod = aliases[segs[0]]
                segs = ["crate"] + list(target_mod.path) + segs[1:]
            if segs[0] not in ("crate", "super", "self") and segs[0] not in mod.children:
                continue
            if is_module_path(mods, start, segs) is not None:
                continue  # a module named, nothing taken from it
            target = resolve(mods, start, segs)
            if target is None:
                continue
            if target.path == path[:len(target.path)]:
                continue  # the module's own ancestor: a child is a part of its parent
            a, b = file_of(mod), file_of(target)
            if a != b:
                edges[(a, b)].add(segs[-1])
    return edges


def circles(edges):
    graph = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(100000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


# The server crate's layering, at the granularity of its top-level modules (see the
# module docs).
SERVER_CRATE = "chatixia-core (lib)"
SERVER = "server"
# Above the server: they build its settings or open its data directory.
ABOVE_SERVER = {"config", "store_cli"}
# The layers under every service, and what each may import from the crate.
LAYERS = {"shard": set(), "limits": {"shard"}}
# File-to-file imports shown per pair of top-level modules in a circle (--verbose: all).
EDGES_SHOWN_MAX = 3


def top_of(rel):
    """The top-level module of a file of the crate (`src/hub/api.rs` -> `hub`), or None
    for the crate root."""
    parts = rel.split(os.sep)
    if len(parts) < 2 or parts[0] != "src" or parts[1] in ("lib.rs", "main.rs"):
        return None
    return parts[1][:-3] if parts[1].endswith(".rs") else parts[1]


def reexport_edges(mods):
    """(from_file, to_file) -> names, for the `pub use` lines of each module (the
    file-level graph follows them through instead)."""
    edges = defaultdict(set)
    for path, mod in mods.items():
        targets = [(segs, name) for name, segs in mod.reexports.items()]
        targets += [(segs, "*") for segs in mod.glob_reexports]
        for segs, name in targets:
            if not segs or (segs[0] not in ("crate", "super", "self")
                            and segs[0] not in mod.children):
                continue
            target = is_module_path(mods, path, segs) or resolve(mods, path, segs)
            if target is not None and target.file != mod.file:
                edges[(mod.file, target.file)].add(name)
    return edges


def layering(mods, edges, rel, verbose):
    """The checks of the server crate's top-level modules; the number of faults."""
    top = defaultdict(lambda: defaultdict(set))  # a -> b -> {"file -> file: names"}
    all_edges = defaultdict(set)
    for e, names in list(edges.items()) + list(reexport_edges(mods).items()):
        all_edges[e] |= names
    for (a, b), names in sorted(all_edges.items()):
        ta, tb = top_of(rel(a)), top_of(rel(b))
        if ta and tb and ta != tb:
            top[ta][tb].add(f"{rel(a)} -> {rel(b)}: {', '.join(sorted(names))}")
    faults = 0
    for a in sorted(top):
        print(f"{SERVER_CRATE}: {a} -> {', '.join(sorted(top[a]))}")
        if verbose:
            for b in sorted(top[a]):
                for why in sorted(top[a][b]):
                    print(f"    {why}")
    graph = {a: set(bs) for a, bs in top.items()}
    for comp in circles({(a, b): () for a in graph for b in graph[a]}):
        faults += 1
        print(f"circle in {SERVER_CRATE} among top-level modules: {', '.join(comp)}")
        for a in comp:
            for b in comp:
                whys = sorted(top.get(a, {}).get(b, ()))
                shown = whys if verbose else whys[:EDGES_SHOWN_MAX]
                for why in shown:
                    print(f"  {why}")
                if len(whys) > len(shown):
                    print(f"  ... and {len(whys) - len(shown)} more {a} -> {b} (--verbose)")
    for a in sorted(top):
        for b in sorted(top[a]):
            broken = None
            if b == SERVER and a not in ABOVE_SERVER:
                broken = f"{a} imports crate::{SERVER} (only server/ names every service)"
            elif a in LAYERS and b not in LAYERS[a]:
                broken = f"{a} imports crate::{b} (the layer under the services knows none)"
            if broken:
                faults += 1
                print(f"layering in {SERVER_CRATE}: {broken}")
                for why in sorted(top[a][b]):
                    print(f"  {why}")
    # Nothing below the server reads or builds HTTP (`crate::http`, `wire::http`).
    for f in sorted({mod.file for mod in mods.values()}):
        t = top_of(rel(f))
        if t is None or t == SERVER or t in ABOVE_SERVER:
            continue
        code = strip_comments_and_strings(open(f, encoding="utf-8").read())
        for m in re.finditer(r"\b(?:crate|wire)\s*::\s*(?:\{[^}]*\b)?http\b", code):
            faults += 1
            line = code.count("\n", 0, m.start()) + 1
            print(f"layering in {SERVER_CRATE}: {rel(f)}:{line} names crate::http "
                  f"(below server/: typed outcomes and errors, not HTTP)")
    return faults


def main():
    verbose = "--verbose" in sys.argv
    found = 0
    for name, root in CRATES:
        if not os.path.isfile(os.path.join(ROOT, root)):
            continue
        mods = load_crate(root)
        edges = edges_of(mods)
        rel = lambda f: os.path.relpath(f, ROOT)
        if verbose:
            for (a, b), names in sorted(edges.items()):
                print(f"{name}: {rel(a)} -> {rel(b)}: {', '.join(sorted(names))}")
        for comp in circles(edges):
            found += 1
            members = set(comp)
            print(f"circle in {name}: {len(comp)} files: {', '.join(rel(f) for f in comp)}")
            for (a, b), names in sorted(edges.items()):
                if a in members and b in members:
                    print(f"  {rel(a)} -> {rel(b)}: {', '.join(sorted(names))}")
        if name == SERVER_CRATE:
            found += layering(mods, edges, rel, verbose)
    if found:
        print(f"check-module-cycles: {found} import circle(s) or layering fault(s)",
              file=sys.stderr)
        return 1
    print("check-module-cycles: no import circle in any crate; the server crate's "
          "top-level modules are layered (no circle, shard and limits under the services, "
          "nothing below server/ imports it or names crate::http)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
