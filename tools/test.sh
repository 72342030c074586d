#!/usr/bin/env bash
# The README's test command: install the package with its test extra, then run the default
# (fast) suite. Slow and conformance cases run separately: pytest -m slow / -m conformance.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e ".[test]"
python -m pytest -q "$@"
