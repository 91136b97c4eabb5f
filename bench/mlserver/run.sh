#!/usr/bin/env bash
# Starts MLServer 1.7.1 in the foreground (exec, so the caller's pid is the server's pid) serving
# ONNX models through bench/mlserver/runtime.py. Install first with bench/setup-mlserver.sh.
#
#   bench/mlserver/run.sh                       # add (+ minilm when MINILM_ONNX is set)
#   bench/mlserver/run.sh add                   # folders under bench/mlserver with a model-settings.json
#   bench/mlserver/run.sh add minilm=/p/m.onnx  # NAME=PATH: an ONNX file served as NAME
#   MINILM_ONNX=/p/m.onnx bench/mlserver/run.sh # same as the line above
#
# Ready when `GET http://127.0.0.1:8180/v2/health/ready` answers 200; stop with SIGTERM/SIGINT.
#
# MLServer loads every model-settings.json under the folder it is given and shuts down when one
# fails to load, so this script writes a model repository holding only the requested models to
# $MLSERVER_BENCH_REPO (default /tmp/oxinfer-mlserver-<http port>), with absolute model paths, and
# starts MLServer on it. bench/mlserver itself also works directly
# (`PYTHONPATH=bench/mlserver bench/.venv-mlserver/bin/mlserver start bench/mlserver`, add only).
#
# Environment:
#   MLSERVER_HTTP_PORT, MLSERVER_GRPC_PORT, MLSERVER_METRICS_PORT, or any MLSERVER_<SETTING>:
#     override bench/mlserver/settings.json (MLServer itself lets settings.json win over the
#     environment, so the generated settings.json leaves such keys out).
#   MINILM_ONNX      ONNX file to serve as "minilm" when no models are named.
#   MLSERVER_VENV    venv with mlserver (default bench/.venv-mlserver).
#   Do not export MLSERVER_MODEL_* variables: MLServer applies them to every model.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${MLSERVER_VENV:-$ROOT/bench/.venv-mlserver}"
PY="$VENV/bin/python"

if [ ! -x "$VENV/bin/mlserver" ]; then
  echo "run.sh: no mlserver in $VENV; run bench/setup-mlserver.sh first" >&2
  exit 1
fi

MODELS=("$@")
if [ ${#MODELS[@]} -eq 0 ]; then
  MODELS=(add)
  if [ -n "${MINILM_ONNX:-}" ]; then
    MODELS+=("minilm=$MINILM_ONNX")
  fi
fi

HTTP_PORT="${MLSERVER_HTTP_PORT:-$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["http_port"])' "$HERE/settings.json")}"
REPO="${MLSERVER_BENCH_REPO:-${TMPDIR:-/tmp}/oxinfer-mlserver-$HTTP_PORT}"

# Write $REPO/settings.json and $REPO/<name>/model-settings.json; relative paths in NAME=PATH
# resolve against the caller's working directory.
"$PY" - "$HERE" "$REPO" "${MODELS[@]}" <<'PY'
import json, os, shutil, sys

here, repo, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
if os.path.isdir(repo):
    shutil.rmtree(repo)
os.makedirs(repo)

with open(os.path.join(here, "settings.json")) as f:
    settings = json.load(f)
overridden = [k for k in settings if "MLSERVER_" + k.upper() in os.environ]
for k in overridden:
    del settings[k]
with open(os.path.join(repo, "settings.json"), "w") as f:
    json.dump(settings, f, indent=2)

for spec in specs:
    if "=" in spec:
        name, path = spec.split("=", 1)
        ms = {
            "name": name,
            "implementation": "runtime.OnnxRuntime",
            "parameters": {"uri": path},
        }
        base = os.getcwd()
    else:
        name = spec
        src = os.path.join(here, name, "model-settings.json")
        if not os.path.isfile(src):
            sys.exit(f"run.sh: no {src}; pass NAME=PATH.onnx instead")
        with open(src) as f:
            ms = json.load(f)
        base = os.path.dirname(src)
    params = ms.setdefault("parameters", {})
    uri = os.path.expandvars(params.get("uri", ""))
    uri = os.path.normpath(os.path.join(base, uri))
    if not os.path.isfile(uri):
        sys.exit(f"run.sh: model {name}: ONNX file {uri} not found")
    params["uri"] = uri
    os.makedirs(os.path.join(repo, name))
    with open(os.path.join(repo, name, "model-settings.json"), "w") as f:
        json.dump(ms, f, indent=2)
    print(f"run.sh: model {ms.get('name', name)} <- {uri}", file=sys.stderr)
if overridden:
    print(f"run.sh: from environment: {', '.join(overridden)}", file=sys.stderr)
PY

echo "run.sh: mlserver start $REPO (http port $HTTP_PORT)" >&2
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO"
exec "$VENV/bin/mlserver" start "$REPO"
