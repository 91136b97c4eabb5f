#!/usr/bin/env python3
"""Load time, first-request latency and steady-state latency per input shape for magika's ONNX
classifier (PyPI `magika`), served by oxinfer's tract runtime (per-shape plans) and onnxruntime
runtime side by side.

    cargo build --release -p oxinfer
    .venv/bin/python bench/magika_latency.py [--bin target/release/oxinfer] [--requests 200]

Needs the test venv (scripts/test.sh makes it: magika, onnxruntime). Latency is measured from
this client over HTTP/1.1 keep-alive with a JSON body; the server runs the model on its own
defaults (onnxruntime intra_op_threads = 1 to compare one core with tract's one thread).
"""

import argparse
import glob
import http.client
import json
import os
import pathlib
import re
import statistics
import subprocess
import tempfile
import time

import magika
import numpy as np
import onnxruntime

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = glob.glob(os.path.join(os.path.dirname(magika.__file__), "models", "*", "model.onnx"))[0]


def start(binary, manifest):
    env = dict(os.environ)
    env.setdefault("ORT_DYLIB_PATH", str(next((pathlib.Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so.1.*"))))
    proc = subprocess.Popen([binary, "serve", "--manifest", manifest, "--http", "127.0.0.1:0"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    log = []
    for line in proc.stderr:
        log.append(line)
        m = re.search(r"HTTP listening on (\S+)", line)
        if m:
            return proc, m.group(1), log
    raise RuntimeError("".join(log))


def body(batch):
    rng = np.random.default_rng(batch)
    x = rng.integers(0, 257, size=(batch, 2048)).tolist()
    return json.dumps({"inputs": [{"name": "bytes", "shape": [batch, 2048], "datatype": "INT32", "data": x}]})


def request(conn, model, payload):
    started = time.perf_counter()
    conn.request("POST", f"/v2/models/{model}/infer", payload, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    elapsed = time.perf_counter() - started
    assert response.status == 200, data[:300]
    return elapsed * 1000


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default=str(ROOT / "target" / "release" / "oxinfer"))
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = pathlib.Path(tmp) / "magika.toml"
        manifest.write_text(
            f'[[models]]\nname = "tract"\nruntime = "tract"\npath = "{MODEL}"\n'
            f'[[models]]\nname = "onnxruntime"\nruntime = "onnxruntime"\npath = "{MODEL}"\n'
            "[models.options]\nintra_op_threads = 1\n"
        )
        proc, address, log = start(args.bin, str(manifest))
        try:
            loads = {m: int(e) for m, e in re.findall(r'model loaded model="(\w+)".*?elapsed_ms=(\d+)', "".join(log))}
            host, port = address.rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port))
            print(f"magika model: {MODEL}")
            print("| runtime | load (ms) | batch | first request (ms) | steady p50 (ms) | steady p99 (ms) |")
            print("|---|---|---|---|---|---|")
            for model in ("tract", "onnxruntime"):
                for batch in (1, 8):
                    payload = body(batch)
                    first = request(conn, model, payload)
                    times = sorted(request(conn, model, payload) for _ in range(args.requests))
                    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
                    print(f"| {model} | {loads.get(model, '?')} | {batch} | {first:.2f} | {statistics.median(times):.2f} | {p99:.2f} |")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
