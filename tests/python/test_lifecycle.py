"""Model lifecycle through the real binary: the drain window on shutdown.

(Deadlines answered at the deadline are in test_scheduler.py.)
"""

import json
import signal
import threading
import time

import grpc
import requests
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import MODELS, Server

SIMPLE = {
    "inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
    ]
}


def manifest(tmp_path, extra=""):
    log = tmp_path / "inference.jsonl"
    path = tmp_path / "m.toml"
    path.write_text(
        f'{extra}\n[inference_log]\npath = "{log}"\n'
        f'[[models]]\nname = "simple"\nruntime = "tract"\npath = "{MODELS / "simple.onnx"}"\n'
    )
    return path, log


def health(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def test_the_drain_window_keeps_serving_with_readiness_false(tmp_path):
    """SIGTERM with drain_seconds = 2: readiness turns false at once over REST, gRPC
    ServerReady and grpc.health.v1, while inference is served normally for the window; then the
    listeners close, and the process exits 0 with every answered request in the log."""
    path, log = manifest(tmp_path, "[server]\ndrain_seconds = 2")
    server = Server(path)
    assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
    assert health(server) == health_pb2.HealthCheckResponse.SERVING
    answered, stop = [], threading.Event()

    def load():
        session = requests.Session()
        while not stop.is_set():
            try:
                r = session.post(f"{server.url}/v2/models/simple/infer", json=SIMPLE, timeout=5)
            except requests.ConnectionError:
                break  # the listener has closed
            answered.append(r.status_code)

    worker = threading.Thread(target=load)
    worker.start()
    time.sleep(0.2)
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 503
    client = grpcclient.InferenceServerClient(server.grpc_address)
    assert client.is_server_ready() is False
    assert health(server) == health_pb2.HealthCheckResponse.NOT_SERVING
    # New connections are still served during the window, over both protocols.
    r = requests.post(f"{server.url}/v2/models/simple/infer", json=SIMPLE, timeout=5)
    assert r.status_code == 200, r.text
    time.sleep(1.0)
    assert requests.post(f"{server.url}/v2/models/simple/infer", json=SIMPLE, timeout=5).status_code == 200
    assert client.is_server_live()
    server.proc.wait(timeout=20)
    exited = time.monotonic() - signalled
    stop.set()
    worker.join()
    assert server.proc.returncode == 0, "".join(server.log)
    assert 2.0 <= exited < 8.0, f"exited {exited:.1f} s after SIGTERM with a 2 s drain window"
    assert answered and set(answered) == {200}, set(answered)
    records = [json.loads(line) for line in open(log)]
    assert len(records) >= len(answered) + 2
    assert all(r["status"] == "ok" for r in records)


def test_a_second_signal_ends_the_drain_window(tmp_path):
    path, _ = manifest(tmp_path)
    server = Server(path, "--drain-seconds", "60")
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 503
    assert requests.post(f"{server.url}/v2/models/simple/infer", json=SIMPLE, timeout=5).status_code == 200
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=20)
    assert server.proc.returncode == 0
    assert time.monotonic() - started < 5
