#!/usr/bin/env python3
"""Fails when a `[patch.crates-io]` entry stops applying.

    scripts/check-patches.py

For the main workspace and the fuzz workspace, every crate named in `[patch.crates-io]`
must resolve to the vendored copy (its manifest under vendor/) and to nothing else: when a
dependency moves to another version of it (str0m to a newer sctp-proto, say), cargo
silently builds the crates.io release beside or instead of our copy and only warns that
the patch "was not used". Exit status 1 names the crate, what the graph uses instead, and
where the patch is documented.
"""
import json
import os
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKSPACES = ["Cargo.toml", "fuzz/Cargo.toml"]


def main():
    failures = []
    for manifest in WORKSPACES:
        path = os.path.join(ROOT, manifest)
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            patches = tomllib.load(f).get("patch", {}).get("crates-io", {})
        if not patches:
            continue
        meta = json.loads(subprocess.run(
            ["cargo", "metadata", "--locked", "--format-version", "1", "--manifest-path", path],
            check=True, capture_output=True, text=True).stdout)
        pkgs = meta["packages"]
        resolved = {n["id"] for n in meta["resolve"]["nodes"]}
        for name, spec in patches.items():
            vendored = os.path.realpath(os.path.join(os.path.dirname(path), spec["path"]))
            used = [p for p in pkgs if p["name"] == name and p["id"] in resolved]
            ours = [p for p in used if os.path.realpath(os.path.dirname(p["manifest_path"])) == vendored]
            others = [p for p in used if p not in ours]
            if not ours:
                failures.append(f"{manifest}: the patch of `{name}` ({spec['path']}) is not used "
                                f"by the crate graph: {', '.join(p['id'] for p in others) or 'no crate of that name'}")
            elif others:
                failures.append(f"{manifest}: `{name}` is built from crates.io too "
                                f"({', '.join(p['version'] for p in others)}) beside the patched "
                                f"{ours[0]['version']}: a dependency moved to another version")
            else:
                print(f"check-patches: {manifest}: `{name}` {ours[0]['version']} is the vendored copy")
    for f in failures:
        print(f"check-patches: {f} (see {os.path.relpath(ROOT)}/vendor/*/README*)", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
