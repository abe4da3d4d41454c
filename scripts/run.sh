#!/usr/bin/env bash
# Quick start, step 1: set everything up if needed, then diagnose the example image that ships
# with dermfm using the default (bundled) model. Extra arguments go to `dermfm diagnose`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/dermfm diagnose src/dermfm/examples/synthetic_lesion.jpg "$@"
