"""The scheduler through the real binary and real clients: backpressure over gRPC (UNAVAILABLE)
and REST (503), queue deadlines from tritonclient's `timeout=` (DEADLINE_EXCEEDED / 504), and the
settings in the model config. The model is the edge-cases plugin, whose text "slow" sleeps 50 ms.
"""

import concurrent.futures
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import Server, _binary


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    library = _binary().with_name("libedge_cases.so")
    manifest = tmp_path_factory.mktemp("sched") / "m.toml"
    manifest.write_text(
        f'[[models]]\nname = "slow"\nruntime = "plugin"\npath = "{library}"\n'
        "[models.scheduler]\ninstances = 1\nmax_queue_size = 2\n"
    )
    s = Server(manifest)
    yield s
    s.stop()


def grpc_inputs():
    text = grpcclient.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"slow"], dtype=np.object_))
    values = grpcclient.InferInput("values", [1], "FP64")
    values.set_data_from_numpy(np.array([1.0]))
    return [text, values]


def test_a_full_queue_is_unavailable_over_grpc_and_503_over_rest(srv):
    client = grpcclient.InferenceServerClient(srv.grpc_address)

    def call(_):
        started = time.monotonic()
        try:
            client.infer("slow", grpc_inputs())
            return "ok", time.monotonic() - started
        except grpcclient.InferenceServerException as e:
            return e.status(), time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(8)))
    refused = [t for s, t in results if s == "StatusCode.UNAVAILABLE"]
    assert refused, results
    assert all(s in ("ok", "StatusCode.UNAVAILABLE") for s, _ in results), results
    assert min(refused) < 0.1, "refused at once, not after waiting"

    body = {"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["slow"]},
        {"name": "values", "datatype": "FP64", "shape": [1], "data": [1.0]},
    ]}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: requests.post(f"{srv.url}/v2/models/slow/infer", json=body, timeout=30), range(8)))
    assert {r.status_code for r in codes} <= {200, 503} and 503 in {r.status_code for r in codes}
    assert "queue is full" in next(r for r in codes if r.status_code == 503).json()["error"]


def test_tritonclient_timeout_expires_in_the_queue(srv):
    client = grpcclient.InferenceServerClient(srv.grpc_address)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        busy = pool.submit(client.infer, "slow", grpc_inputs())
        time.sleep(0.01)
        with pytest.raises(grpcclient.InferenceServerException) as e:
            client.infer("slow", grpc_inputs(), timeout=1000)  # 1 ms, in the queue behind `busy`
        busy.result()
    assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED", e.value
    assert "timeout expired" in e.value.message()

    http = httpclient.InferenceServerClient(srv.address)
    inputs = [httpclient.InferInput("text", [1], "BYTES"), httpclient.InferInput("values", [1], "FP64")]
    inputs[0].set_data_from_numpy(np.array([b"slow"], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([1.0]))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        busy = pool.submit(requests.post, f"{srv.url}/v2/models/slow/infer", json={"inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["slow"]},
            {"name": "values", "datatype": "FP64", "shape": [1], "data": [1.0]}]}, timeout=30)
        time.sleep(0.01)
        with pytest.raises(httpclient.InferenceServerException) as e:
            http.infer("slow", inputs, timeout=1000)
        assert busy.result().status_code == 200
    assert "timeout expired" in str(e.value)


def test_a_queued_request_is_answered_at_its_deadline(tmp_path):
    """One instance busy with ~450 ms of queued work: a request with a 20 ms timeout gets its
    504 / DEADLINE_EXCEEDED within a few milliseconds of the deadline, is never executed, and
    leaves the queue at once; the model's default_timeout_us behaves the same."""
    library = _binary().with_name("libedge_cases.so")
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        f'[[models]]\nname = "slow"\nruntime = "plugin"\npath = "{library}"\n'
        "[models.scheduler]\ninstances = 1\n"
        f'[[models]]\nname = "slow-default"\nruntime = "plugin"\npath = "{library}"\n'
        "[models.scheduler]\ninstances = 1\ndefault_timeout_us = 30000\n"
    )
    server = Server(manifest)
    body = {"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["slow"]},
        {"name": "values", "datatype": "FP64", "shape": [1], "data": [1.0]},
    ]}

    def executions(model):
        stats = requests.get(f"{server.url}/v2/models/{model}/stats", timeout=10).json()
        return stats["model_stats"][0]["execution_count"]

    try:
        for model, extra, deadline in (("slow", {"parameters": {"timeout": 20000}}, 0.020), ("slow-default", {}, 0.030)):
            with concurrent.futures.ThreadPoolExecutor(10) as pool:
                patient = {**body, "parameters": {"timeout": 10_000_000}}
                busy = [pool.submit(requests.post, f"{server.url}/v2/models/{model}/infer", json=patient, timeout=30) for _ in range(9)]
                time.sleep(0.05)
                started = time.monotonic()
                r = requests.post(f"{server.url}/v2/models/{model}/infer", json={**body, **extra}, timeout=30)
                elapsed = time.monotonic() - started
                assert r.status_code == 504, r.text
                assert "timeout expired" in r.json()["error"]
                assert elapsed < deadline + 0.08, f"answered after {elapsed * 1000:.0f} ms, for a {deadline * 1000:.0f} ms deadline"
                assert all(b.result().status_code == 200 for b in busy)
            assert executions(model) == 9, "the expired request never ran"
        grpc = grpcclient.InferenceServerClient(server.grpc_address)
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            busy = [pool.submit(grpc.infer, "slow", grpc_inputs()) for _ in range(9)]
            time.sleep(0.05)
            started = time.monotonic()
            with pytest.raises(grpcclient.InferenceServerException) as e:
                grpc.infer("slow", grpc_inputs(), timeout=20000)
            elapsed = time.monotonic() - started
            [b.result() for b in busy]
        assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED", e.value
        assert elapsed < 0.1, f"answered after {elapsed * 1000:.0f} ms"
    finally:
        server.stop()


def test_config_reports_the_scheduler(srv):
    config = requests.get(f"{srv.url}/v2/models/slow/config", timeout=10).json()
    assert config["instance_group"][0]["count"] == 1
    assert config["parameters"]["scheduler.max_queue_size"]["string_value"] == "2"
    assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
