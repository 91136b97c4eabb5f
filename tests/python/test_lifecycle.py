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


def model_entry(name, file, version=1, extra=""):
    return f'[[models]]\nname = "{name}"\nversion = {version}\nruntime = "tract"\npath = "{file}"\n{extra}\n'


def index(server):
    r = requests.post(f"{server.url}/v2/repository/index", json={}, timeout=10)
    return {(m["name"], m["version"]): m["state"] for m in r.json()}


def wait_for(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def metric(server, line_start):
    for line in requests.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    return 0.0


def test_sighup_applies_the_manifest_difference_under_load(tmp_path):
    """Reloads under concurrent REST and gRPC traffic: a version added, a model changed
    (swapped in when ready), a version removed, a manifest that does not parse, a model that
    fails to load. Every response to the model that stays is a 200."""
    mlp, mlp_v2, simple = MODELS / "mlp.onnx", MODELS / "mlp_v2.onnx", MODELS / "simple.onnx"
    path = tmp_path / "m.toml"
    write = lambda *entries: path.write_text("".join(entries))
    write(model_entry("simple", simple), model_entry("mlp", mlp))
    server = Server(path)
    statuses, stop = [], threading.Event()

    def rest():
        import numpy as np
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(server.address)
        inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
        inputs[1].set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
        while not stop.is_set():
            try:
                client.infer("simple", inputs)
                statuses.append(200)
            except httpclient.InferenceServerException as e:
                statuses.append(e.status())

    def grpc_load():
        client = grpcclient.InferenceServerClient(server.grpc_address)
        inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
        import numpy as np

        inputs[0].set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
        inputs[1].set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
        while not stop.is_set():
            try:
                client.infer("simple", inputs)
                statuses.append(200)
            except grpcclient.InferenceServerException as e:
                statuses.append(e.status())

    workers = [threading.Thread(target=rest), threading.Thread(target=rest), threading.Thread(target=grpc_load)]
    for w in workers:
        w.start()
    try:
        x = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.5, 1.0, -0.25, 2.0]}]}
        for _ in range(3):
            assert requests.post(f"{server.url}/v2/models/mlp/infer", json=x, timeout=10).status_code == 200
        before = requests.get(f"{server.url}/v2/models/mlp/versions/1/stats", timeout=10).json()["model_stats"][0]["inference_stats"]["success"]["count"]
        # Add mlp version 2, change simple (two instances): applied on SIGHUP.
        write(model_entry("simple", simple, extra="[models.scheduler]\ninstances = 2"), model_entry("mlp", mlp), model_entry("mlp", mlp_v2, version=2))
        server.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: index(server).get(("mlp", "2")) == "READY"), index(server)
        assert wait_for(lambda: requests.get(f"{server.url}/v2/models/simple/config", timeout=10).json()["instance_group"][0]["count"] == 2)
        after = requests.get(f"{server.url}/v2/models/mlp/versions/1/stats", timeout=10).json()["model_stats"][0]["inference_stats"]["success"]["count"]
        assert after == before, "an unchanged model keeps its statistics"
        # Remove version 1: it gets 404 once the new state is committed; the name serves v2.
        write(model_entry("simple", simple, extra="[models.scheduler]\ninstances = 2"), model_entry("mlp", mlp_v2, version=2))
        server.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: requests.post(f"{server.url}/v2/models/mlp/versions/1/infer", json=x, timeout=10).status_code == 404)
        assert requests.post(f"{server.url}/v2/models/mlp/infer", json=x, timeout=10).json()["model_version"] == "2"
        # A manifest that does not parse: nothing changes; counted.
        failures = metric(server, 'oxinfer_manifest_reloads_total{outcome="failure"}')
        path.write_text("[[models]]\nname = \n")
        server.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: metric(server, 'oxinfer_manifest_reloads_total{outcome="failure"}') == failures + 1)
        # Counted before it is logged, and the log is read from the server's stderr by a thread
        # of this test: wait for the line rather than look once.
        assert wait_for(lambda: any("manifest reload refused" in line and "m.toml" in line for line in server.log))
        # A model that fails to load: that model keeps what it served; the rest applies. A
        # [server] change is reported as needing a restart.
        broken = tmp_path / "broken.onnx"
        broken.write_bytes(b"not an onnx model")
        write("[server]\ndrain_seconds = 3\n", model_entry("simple", simple), model_entry("mlp", broken, version=2))
        server.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: metric(server, 'oxinfer_manifest_reloads_total{outcome="failure"}') == failures + 2)
        assert requests.post(f"{server.url}/v2/models/mlp/infer", json=x, timeout=10).status_code == 200
        assert wait_for(lambda: requests.get(f"{server.url}/v2/models/simple/config", timeout=10).json()["instance_group"][0]["count"] == 1)
        successes = metric(server, 'oxinfer_manifest_reloads_total{outcome="success"}')
        assert successes == 2
        assert wait_for(lambda: any("[server] changed; it needs a restart" in line for line in server.log))
    finally:
        stop.set()
        for w in workers:
            w.join()
        server.stop()
    assert len(statuses) > 50
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert server.proc.returncode == 0


def test_watch_applies_changes_to_the_manifest_and_to_model_files(tmp_path):
    """--watch: a model added to the manifest is served, and a model file replaced in place is
    loaded again (its new digest in every response)."""
    import hashlib
    import shutil

    served = tmp_path / "model.onnx"
    shutil.copy(MODELS / "mlp.onnx", served)
    path = tmp_path / "m.toml"
    path.write_text(model_entry("mlp", served))
    server = Server(path, "--watch", "--watch-interval-ms", "200")
    x = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.5, 1.0, -0.25, 2.0]}]}
    try:
        first = requests.post(f"{server.url}/v2/models/mlp/infer", json=x, timeout=10).json()
        path.write_text(model_entry("mlp", served) + model_entry("simple", MODELS / "simple.onnx"))
        assert wait_for(lambda: index(server).get(("simple", "1")) == "READY"), index(server)
        staged = tmp_path / "model.onnx.new"
        shutil.copy(MODELS / "mlp_v2.onnx", staged)
        staged.rename(served)
        digest = hashlib.sha256(served.read_bytes()).hexdigest()
        assert wait_for(lambda: requests.post(f"{server.url}/v2/models/mlp/infer", json=x, timeout=10).json()["parameters"]["model_sha256"] == digest)
        second = requests.post(f"{server.url}/v2/models/mlp/infer", json=x, timeout=10).json()
        assert second["outputs"][0]["data"] != first["outputs"][0]["data"]
    finally:
        server.stop()
    assert server.proc.returncode == 0


def test_warmup_runs_before_ready_and_a_failing_one_fails_the_load(tmp_path):
    from conftest import run_oxinfer

    request = tmp_path / "warmup.json"
    request.write_text(json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [0.5] * 8}]}))
    path = tmp_path / "m.toml"
    path.write_text(
        model_entry("mlp", MODELS / "mlp.onnx", extra="[models.scheduler]\ninstances = 2")
        + '[models.warmup]\nzeros = true\nrequests = ["warmup.json"]\ncount = 2\n'
        + '[[models.warmup.inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [1, 4]\ndata = [0.5, 1.0, -0.25, 2.0]\n'
    )
    server = Server(path)
    try:
        warmed = [line for line in server.log if "model warmed up" in line]
        # 3 requests x 2 times on one shared instance (tract plans run concurrently).
        assert warmed and "runs=6" in warmed[0], server.log
        stats = requests.get(f"{server.url}/v2/models/mlp/stats", timeout=10).json()["model_stats"][0]
        assert stats["inference_count"] == 0, "warmup is not counted as traffic"
    finally:
        server.stop()
    request.write_text(json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [0.5] * 3}]}))
    r = run_oxinfer("check", "--manifest", str(path))
    assert r.returncode != 0 and "warmup failed" in r.stderr and "input 'x': shape [1, 3] does not match the model's [-1, 4]" in r.stderr, r.stderr
    path.write_text(model_entry("simple", MODELS / "dtypes.onnx") + "[models.warmup]\nzeros = true\n")
    r = run_oxinfer("check", "--manifest", str(path))
    assert r.returncode != 0 and "zeros = true cannot build BYTES input" in r.stderr, r.stderr
