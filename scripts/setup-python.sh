#!/usr/bin/env bash
# Create (or reuse) the Python virtual environment used by the interop tests:
# the real `chatixia` agent from PyPI (version 0.4.3), plus PyJWT and websockets, and
# aiortc (an independent WebRTC stack for the sidecar interop test), Playwright (drives
# the Debian `chromium` for the dashboard's browser test; it never downloads a browser),
# and kosoku (the Autobahn TestSuite cases, for tests/it/autobahn.rs).
#
#   scripts/setup-python.sh            # venv at <repo>/target/pyenv
#   CHATIXIA_VENV=/some/dir scripts/setup-python.sh
#   CHATIXIA_PYTHON=/usr/bin/python3.12 scripts/setup-python.sh   # force an interpreter
#
# Idempotent: a venv that already has chatixia 0.4.3 (and the other pins) is kept as is.
# Progress goes to stderr; the last line on stdout is the venv's python path.
set -euo pipefail

CHATIXIA_VERSION=0.4.3
# Top-level pins, verified with chatixia 0.4.3 on CPython 3.12 and 3.13.
PINS=("chatixia==${CHATIXIA_VERSION}" "PyJWT==2.15.1" "websockets==17.4" "aiortc==1.16.0")
# Added later: installed into an existing venv without rebuilding it.
EXTRA_PINS=("playwright==1.65.2" "kosoku==0.1.0" "openapi-spec-validator==0.9.0" "schemathesis==4.32.5")

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CHATIXIA_VENV:-${repo_root}/target/pyenv}"
constraints="${repo_root}/scripts/python-constraints.txt"

log() { printf 'setup-python: %s\n' "$*" >&2; }

# Does "$1" run, and is it CPython >= 3.12 with venv + ensurepip? (pyenv shims for a
# version that is not activated exist on PATH but fail to run: they are skipped here.)
usable() {
    "$1" - <<'PY' >/dev/null 2>&1
import sys
assert sys.version_info >= (3, 12)
import venv, ensurepip  # noqa: F401
PY
}

# Does the venv already hold what we need?
venv_ready() {
    [[ -x "${venv}/bin/python" && -x "${venv}/bin/chatixia" ]] || return 1
    "${venv}/bin/python" - "$CHATIXIA_VERSION" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
assert sys.version_info >= (3, 12)
assert version("chatixia") == sys.argv[1]
import jwt, websockets, aiortc, kosoku, chatixia.runner  # noqa: F401
PY
}

extras_ready() {
    "${venv}/bin/python" -c 'import playwright.sync_api' >/dev/null 2>&1 &&
        [[ -x "${venv}/bin/kosoku" ]] &&
        [[ -x "${venv}/bin/openapi-spec-validator" && -x "${venv}/bin/schemathesis" ]]
}

find_python() {
    local c
    if [[ -n "${CHATIXIA_PYTHON:-}" ]]; then
        if usable "${CHATIXIA_PYTHON}"; then
            echo "${CHATIXIA_PYTHON}"
            return 0
        fi
        log "CHATIXIA_PYTHON=${CHATIXIA_PYTHON} is not a working Python >= 3.12 with venv"
        return 1
    fi
    # 1. python3.13 / python3.12 on PATH.
    for c in python3.13 python3.12; do
        if command -v "$c" >/dev/null 2>&1 && usable "$c"; then
            command -v "$c"
            return 0
        fi
    done
    # 2. pyenv's installed versions, newest first.
    local pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
    if [[ -d "${pyenv_root}/versions" ]]; then
        while IFS= read -r c; do
            if [[ -x "$c" ]] && usable "$c"; then
                echo "$c"
                return 0
            fi
        done < <(
            shopt -s nullglob
            for p in "${pyenv_root}"/versions/3.1[2-9]*/bin/python3; do echo "$p"; done |
                sort -V -r
        )
    fi
    # 3. A Python managed by uv.
    if command -v uv >/dev/null 2>&1; then
        c="$(uv python find '>=3.12' 2>/dev/null || true)"
        if [[ -n "$c" ]] && usable "$c"; then
            echo "$c"
            return 0
        fi
    fi
    return 1
}

with_lock() {
    # Serialize concurrent runs (e.g. two test processes) on the same venv.
    mkdir -p "$(dirname "$venv")"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"${venv}.lock"
        flock 9
    fi
}

with_lock

pip_args=(--disable-pip-version-check --no-input)
if [[ -f "$constraints" ]]; then
    pip_args+=(--constraint "$constraints")
fi

if venv_ready; then
    log "reusing ${venv} (chatixia ${CHATIXIA_VERSION})"
    if ! extras_ready; then
        log "pip install ${EXTRA_PINS[*]}"
        "${venv}/bin/python" -m pip install "${pip_args[@]}" "${EXTRA_PINS[@]}" >&2
    fi
else
    if ! python="$(find_python)"; then
        cat >&2 <<MSG
setup-python: ERROR: no Python >= 3.12 found (chatixia ${CHATIXIA_VERSION} requires it).
Looked for: \$CHATIXIA_PYTHON, python3.13/python3.12 on PATH,
  ${PYENV_ROOT:-$HOME/.pyenv}/versions/3.1[2-9]*/bin/python3, and \`uv python find '>=3.12'\`.
Install one, e.g.:
  pyenv install 3.12          # or
  uv python install 3.12      # or
  apt-get install python3.12 python3.12-venv
then re-run scripts/setup-python.sh (or set CHATIXIA_PYTHON=/path/to/python3.12).
MSG
        exit 1
    fi
    log "using $("$python" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    log "creating ${venv}"
    "$python" -m venv --clear "$venv"
    log "pip install ${PINS[*]} ${EXTRA_PINS[*]}"
    "${venv}/bin/python" -m pip install "${pip_args[@]}" "${PINS[@]}" "${EXTRA_PINS[@]}" >&2
    if ! venv_ready || ! extras_ready; then
        log "ERROR: ${venv} still lacks chatixia ${CHATIXIA_VERSION} after pip install"
        exit 1
    fi
    log "ready: ${venv}"
fi

echo "${venv}/bin/python"
