#!/usr/bin/env bash
# Creates bench/.venv-mlserver with MLServer and onnxruntime, for the MLServer side of the
# comparison (bench/mlserver/). Idempotent: does nothing when the venv already holds exactly
# these pins. Needs only python3 (3.11 tested) and PyPI.
#
#   bench/setup-mlserver.sh            # install or verify
#   FORCE=1 bench/setup-mlserver.sh    # recreate the venv from scratch
#
# Top-level pins are below; the transitive set that was tested is pinned in
# bench/mlserver/constraints.txt (used as a pip constraints file when present) so that a later
# run resolves the same FastAPI/pydantic/grpcio/protobuf versions.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/bench/.venv-mlserver"
PYTHON="${PYTHON:-python3}"
CONSTRAINTS="$ROOT/bench/mlserver/constraints.txt"

# httptools: uvicorn's C HTTP parser (what `uvicorn[standard]` adds). MLServer does not depend on
# it, and without it uvicorn falls back to the pure-Python h11 parser; installing it is the
# documented uvicorn speed-up, so the peer gets its best ordinary configuration.
PINS=(
  "mlserver==1.7.1"
  "onnxruntime==1.31.1"
  "numpy==2.4.6"
  "httptools==0.9.0"
)

say() { echo "[setup-mlserver] $*"; }

# True when the venv exists and every pin is installed at exactly that version.
pins_ok() {
  [ -x "$VENV/bin/python" ] || return 1
  "$VENV/bin/python" - "${PINS[@]}" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if have != want:
        sys.exit(1)
PY
}

if [ "${FORCE:-0}" = "1" ] && [ -d "$VENV" ]; then
  say "FORCE=1: removing $VENV"
  rm -rf "$VENV"
fi

if pins_ok; then
  [ -f "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"
  say "already installed in $VENV: ${PINS[*]}"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating venv $VENV with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
# Keep the venv out of git (Python >= 3.13 venvs do this themselves).
[ -f "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"

say "upgrading pip"
"$VENV/bin/python" -m pip install --quiet --upgrade pip

CARGS=()
if [ -f "$CONSTRAINTS" ]; then
  say "using constraints $CONSTRAINTS"
  CARGS=(-c "$CONSTRAINTS")
fi

say "installing ${PINS[*]}"
if ! "$VENV/bin/python" -m pip install --quiet "${CARGS[@]}" "${PINS[@]}"; then
  if [ ${#CARGS[@]} -eq 0 ]; then
    exit 1
  fi
  # e.g. another Python version where a constrained wheel does not exist
  say "WARNING: install with constraints failed; retrying with the top-level pins only"
  "$VENV/bin/python" -m pip install --quiet "${PINS[@]}"
fi

if ! pins_ok; then
  say "ERROR: pins not satisfied after install" >&2
  exit 1
fi

say "checking imports"
"$VENV/bin/python" -c 'import mlserver, onnxruntime, numpy, httptools; print("[setup-mlserver] mlserver", mlserver.__version__, "| onnxruntime", onnxruntime.__version__, "| numpy", numpy.__version__, "| httptools", httptools.__version__)'
say "done; start with bench/mlserver/run.sh"
