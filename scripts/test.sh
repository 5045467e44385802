#!/usr/bin/env bash
# Set up and run the test suite on a fresh machine: Debian's chromium (the report test renders the HTML
# report in it), a virtual environment with the package and its test extra (Ray included, for the executor tests),
# then the checks CI enforces:
# ruff format, ruff lint, mypy on the package, and pytest (arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium not installed and not root; the report rendering test will be skipped" >&2
  fi
fi
python3 -m venv .venv
# constraints.txt pins torch==2.13.0 (the CPU build on our machines); pyproject.toml alone allows a range.
.venv/bin/pip install -q -c constraints.txt -e '.[test]'
echo "== ruff format --check" && .venv/bin/ruff format --check scalescope tests bench
echo "== ruff check" && .venv/bin/ruff check scalescope tests bench
echo "== mypy" && .venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
