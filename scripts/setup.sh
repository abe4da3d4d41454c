#!/usr/bin/env bash
# Create .venv (Python 3.11) and install dermfm with its dependencies, only when missing or when
# pyproject.toml changed since the last install. Usage: scripts/setup.sh [dev]
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

if [ ! -x .venv/bin/python ]; then
    echo "dermfm setup: creating .venv with $("$python" --version)"
    "$python" -m venv .venv
fi

stamp=".venv/.dermfm-installed${extras:+-$extras}"
want="$(sha256sum pyproject.toml | cut -c1-16)"
# a dev install also satisfies a plain one
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] &&
   { [ -n "$extras" ] || [ "$(cat .venv/.dermfm-installed-dev 2>/dev/null || true)" != "$want" ]; }; then
    echo "dermfm setup: installing dermfm${extras:+[$extras]} and its dependencies (first time: several minutes)"
    target="."
    [ -n "$extras" ] && target=".[$extras]"
    .venv/bin/python -m pip install --disable-pip-version-check -q -e "$target"
    echo "$want" >"$stamp"
fi
# The bundled model ships inside the package: there is nothing to download.
# The web app's browser tests drive Debian's Chromium (never a downloaded browser).
if [ "$extras" = "dev" ] && ! command -v chromium >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
        echo "dermfm setup: installing Debian's chromium for the browser tests"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null ||
            { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
    else
        echo "dermfm setup: chromium is missing (apt-get install chromium); browser tests will skip"
    fi
fi
