#!/usr/bin/env bash
# Quick start, step 2: set up what the tests need, lint, and run the test suite (slow tests are
# deselected by default; pass -m slow to run them). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check src tests benchmarks scripts
exec .venv/bin/python -m pytest "$@"
