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
# Test-only system packages: Debian's Chromium for the web app's browser tests (never a
# downloaded browser), a PostgreSQL server for the case-store tests on PostgreSQL, and Orthanc
# with its DICOMweb plugin, the PACS of the DICOMweb tests (tests/test_interop_dicomweb.py).
if [ "$extras" = "dev" ]; then
    missing=""
    command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
    command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || missing="$missing orthanc"
    [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing="$missing orthanc-dicomweb"
    if [ -n "$missing" ]; then
        if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
            echo "dermfm setup: installing$missing for the tests"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >/dev/null ||
                { apt-get update -q >/dev/null &&
                  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >/dev/null; }
        else
            echo "dermfm setup:$missing missing (apt-get install$missing); those tests will skip"
        fi
    fi
fi
