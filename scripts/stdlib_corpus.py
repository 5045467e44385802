"""Copy the Python standard library's source files into a corpus directory (default ./stdlib-corpus).

A real-text corpus that every machine with Python has offline, for ``scalescope/experiments/real_text.toml``:

    python3 scripts/stdlib_corpus.py            # -> ./stdlib-corpus (about 10 MB with Python 3.11)
    scalescope run real_text --store real-text --workers 2 --threads 1

Which files: every ``*.py`` under ``sysconfig.get_paths()["stdlib"]``, in sorted order of their relative
paths, except third-party packages (site-packages), the test suites (test/, tests/, idle_test/), the codec
tables (encodings/: generated lookup tables, not prose-like code) and the build-specific
``_sysconfigdata*`` module. The set depends on the Python version (the corpus's fingerprint enters the run
ids, so runs on another version's corpus are other runs); it prints the version, file count and bytes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import sysconfig
from pathlib import Path

SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "encodings", "__pycache__"}


def stdlib_files(root: Path) -> list[Path]:
    """The corpus files under ``root``, sorted by relative path."""
    out = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if SKIP_DIRS.intersection(rel.parts[:-1]) or rel.name.startswith("_sysconfigdata") or not p.is_file():
            continue
        out.append(rel)
    return sorted(out, key=lambda r: r.as_posix())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="copy the Python standard library's .py files into a corpus folder")
    ap.add_argument("out", nargs="?", default="stdlib-corpus", help="output folder (default: stdlib-corpus)")
    args = ap.parse_args(argv)
    root = Path(sysconfig.get_paths()["stdlib"])
    out = Path(args.out)
    if out.exists():
        print(f"{out} exists; remove it first to rebuild it", file=sys.stderr)
        return 1
    files = stdlib_files(root)
    total = 0
    for rel in files:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, dst)
        total += dst.stat().st_size
    version = ".".join(map(str, sys.version_info[:3]))
    print(f"{out}: {len(files)} files, {total:,} bytes, from the standard library of Python {version} ({root})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
