"""Traceability: model digest and provenance, request ids, the tamper-evident inference log and
`oxinfer audit`, and Prometheus metrics checked with prometheus_client's own parser.
"""

import hashlib
import json
import pathlib
import threading
import time
import uuid

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from conftest import MODELS, Server, run_oxinfer

SIMPLE_SHA = hashlib.sha256((MODELS / "simple.onnx").read_bytes()).hexdigest()
MLP_SHA = hashlib.sha256((MODELS / "mlp.onnx").read_bytes()).hexdigest()


def manifest(tmp, extra_models="", log=True, **log_settings):
    settings = {"path": "audit/inference.jsonl", **log_settings}
    log_table = "[inference_log]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()) if log else ""
    text = (
        log_table
        + f'[[models]]\nname = "simple"\nruntime = "tract"\npath = "{MODELS / "simple.onnx"}"\nsha256 = "{SIMPLE_SHA}"\n'
        + '[models.provenance]\nsource = "models:/simple/3"\nregistry_version = "3"\nrun_id = "run-42"\n'
        + 'created = "2026-11-01T10:00:00Z"\nmodel_card = "https://example.invalid/cards/simple"\nlabels = { team = "fraud", stage = "prod" }\n'
        + f'[[models]]\nname = "mlp"\nruntime = "tract"\npath = "{MODELS / "mlp.onnx"}"\n'
        + extra_models
    )
    path = tmp / "traced.toml"
    path.write_text(text)
    return path


def simple_body(i, request_id=None):
    body = {"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [i] * 16},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}]}
    if request_id:
        body["id"] = request_id
    return json.dumps(body)


def post(server, path, body, headers=None):
    import http.client

    host, port = server.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", path, body, headers or {})
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def log_records(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture()
def traced(tmp_path):
    server = Server(manifest(tmp_path))
    yield server, tmp_path / "audit" / "inference.jsonl"
    server.stop()


def test_digest_and_provenance_in_metadata_and_config(traced):
    server, _ = traced
    client = httpclient.InferenceServerClient(url=server.address)
    meta = client.get_model_metadata("simple")
    assert meta["parameters"]["sha256"] == SIMPLE_SHA
    assert meta["parameters"]["provenance.source"] == "models:/simple/3"
    assert meta["parameters"]["provenance.run_id"] == "run-42"
    assert meta["parameters"]["provenance.labels.team"] == "fraud"
    assert client.get_model_metadata("mlp")["parameters"]["sha256"] == MLP_SHA
    config = client.get_model_config("simple")
    assert config["parameters"]["sha256"] == {"string_value": SIMPLE_SHA}
    assert config["parameters"]["provenance.registry_version"] == {"string_value": "3"}
    g = grpcclient.InferenceServerClient(url=server.grpc_address)
    # ModelMetadataResponse.properties (field 6, OIP) is unknown to tritonclient's proto; protobuf
    # keeps unknown fields, so the digest is in the re-serialized message.
    assert SIMPLE_SHA.encode() in g.get_model_metadata("simple").SerializeToString()
    assert g.get_model_config("simple").config.parameters["provenance.model_card"].string_value.endswith("/simple")


def test_sha256_matches_sha256sum_of_the_file():
    import subprocess

    out = subprocess.run(["sha256sum", str(MODELS / "simple.onnx")], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == SIMPLE_SHA


def test_a_pinned_wrong_digest_refuses_to_load(tmp_path):
    wrong = "0" * 64
    path = manifest(tmp_path, log=False)
    path.write_text(path.read_text().replace(SIMPLE_SHA, wrong))
    result = run_oxinfer("check", "--manifest", str(path))
    assert result.returncode != 0
    assert "sha256 mismatch" in result.stderr and wrong in result.stderr and SIMPLE_SHA in result.stderr
    path.write_text(path.read_text().replace(wrong, "xyz"))
    assert "not a SHA-256 digest" in run_oxinfer("check", "--manifest", str(path)).stderr


def test_every_response_carries_id_version_and_digest(traced):
    server, _ = traced
    status, headers, body = post(server, "/v2/models/simple/infer", simple_body(1))
    response = json.loads(body)
    assert status == 200
    generated = response["id"]
    assert uuid.UUID(generated) and headers["x-request-id"] == generated
    assert response["model_version"] == "1"
    assert response["parameters"]["model_sha256"] == SIMPLE_SHA
    # The client's id, from the body or from X-Request-ID.
    _, headers, body = post(server, "/v2/models/simple/infer", simple_body(1, "mine-1"))
    assert json.loads(body)["id"] == "mine-1" and headers["x-request-id"] == "mine-1"
    _, headers, body = post(server, "/v2/models/simple/infer", simple_body(1), {"X-Request-ID": "hdr-1"})
    assert json.loads(body)["id"] == "hdr-1" and headers["x-request-id"] == "hdr-1"
    # Errors carry the id too.
    status, headers, _ = post(server, "/v2/models/simple/infer", "{", {"X-Request-ID": "bad-1"})
    assert status == 400 and headers["x-request-id"] == "bad-1"
    # gRPC.
    g = grpcclient.InferenceServerClient(url=server.grpc_address)
    a = np.ones((1, 16), dtype=np.int32)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    r = g.infer("simple", inputs).get_response()
    assert uuid.UUID(r.id) and r.model_version == "1"
    assert r.parameters["model_sha256"].string_param == SIMPLE_SHA


def test_n_requests_give_n_records_and_the_chain_verifies(traced):
    server, log = traced
    sent = []
    for i in range(6):
        rid = f"ok-{i}"
        assert post(server, "/v2/models/simple/infer", simple_body(i, rid))[0] == 200
        sent.append((rid, "ok"))
    for rid, body in [("bad-shape", simple_body(1, "bad-shape").replace("[1, 16]", "[2, 16]", 1)), ("bad-json", "{")]:
        assert post(server, "/v2/models/simple/infer", body, {"X-Request-ID": rid})[0] == 400
        sent.append((rid, "error"))
    assert post(server, "/v2/models/nope/infer", simple_body(1, "no-model"))[0] == 404
    sent.append(("no-model", "error"))
    g = grpcclient.InferenceServerClient(url=server.grpc_address)
    a = np.full((1, 16), 5, dtype=np.int32)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    g.infer("simple", inputs, request_id="grpc-1")
    sent.append(("grpc-1", "ok"))
    server.stop()
    records = log_records(log)
    assert [(r["request_id"], r["status"]) for r in records] == sent
    first = records[0]
    assert first["format"] == 1 and first["model"] == {"name": "simple", "version": "1", "sha256": SIMPLE_SHA}
    assert first["protocol"] == "http" and first["client"].startswith("127.0.0.1:")
    assert first["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [0] * 16}
    assert first["outputs"][0]["data"] == [1] * 16
    assert first["timestamp"].endswith("Z") and first["latency_us"] > 0
    assert records[-1]["protocol"] == "grpc" and records[-1]["outputs"][0]["data"] == [10] * 16
    assert "needs 32 elements but 'data' has 16" in records[6]["error"]
    verify = run_oxinfer("audit", "verify", str(log))
    assert verify.returncode == 0, verify.stderr
    assert f"OK: {len(sent)} record(s) intact" in verify.stdout
    show = run_oxinfer("audit", "show", "--id", "ok-3", str(log))
    assert show.returncode == 0 and json.loads(show.stdout.splitlines()[1])["inputs"][0]["data"] == [3] * 16
    # One byte changed in the middle of the file: the exact record is reported.
    text = log.read_text()
    lines = text.splitlines(keepends=True)
    offset = sum(len(l) for l in lines[:4]) + lines[4].index('"data":[4') + len('"data":[')
    tampered = text[:offset] + "5" + text[offset + 1:]
    log.write_text(tampered)
    verify = run_oxinfer("audit", "verify", str(log))
    assert verify.returncode != 0
    assert f"{log}:5: broken record (request_id ok-4)" in verify.stderr


def test_graceful_shutdown_under_load_loses_no_record(tmp_path):
    server = Server(manifest(tmp_path, queue_capacity=8))
    log = tmp_path / "audit" / "inference.jsonl"
    answered, stop = [], threading.Event()

    def client(n):
        import http.client

        host, port = server.address.rsplit(":", 1)
        i = 0
        while not stop.is_set():
            rid = f"load-{n}-{i}"
            try:
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
                conn.request("POST", "/v2/models/simple/infer", simple_body(i, rid))
                if conn.getresponse().status == 200:
                    answered.append(rid)
            except OSError:
                return
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    server.proc.terminate()  # SIGTERM while requests are in flight
    server.proc.wait(timeout=30)
    stop.set()
    for t in threads:
        t.join()
    assert server.proc.returncode == 0
    logged = {r["request_id"] for r in log_records(log)}
    assert len(answered) > 50
    assert set(answered) <= logged, f"{len(set(answered) - logged)} answered requests have no record"
    assert run_oxinfer("audit", "verify", str(log)).returncode == 0


def test_rotation_keeps_the_chain_across_files(tmp_path):
    server = Server(manifest(tmp_path, max_file_bytes=3000, retention_files=50))
    for i in range(12):
        assert post(server, "/v2/models/simple/infer", simple_body(i, f"rot-{i}"))[0] == 200
    server.stop()
    log = tmp_path / "audit" / "inference.jsonl"
    rotated = sorted(log.parent.glob("inference.jsonl.*"))
    assert len(rotated) >= 2
    files = [str(p) for p in rotated] + [str(log)]
    result = run_oxinfer("audit", "verify", *files)
    assert result.returncode == 0, result.stderr
    assert "OK: 12 record(s) intact" in result.stdout
    # Each file starts with the previous file's last hash.
    first_of_second = log_records(rotated[1])[0]
    assert first_of_second["prev_hash"] == log_records(rotated[0])[-1]["hash"]
    # A restarted server resumes the chain.
    server = Server(manifest(tmp_path, max_file_bytes=3000, retention_files=50))
    assert post(server, "/v2/models/simple/infer", simple_body(1, "after-restart"))[0] == 200
    server.stop()
    rotated = sorted(log.parent.glob("inference.jsonl.*"))
    assert run_oxinfer("audit", "verify", *[str(p) for p in rotated], str(log)).returncode == 0
    # Retention: only the newest files are kept.
    server = Server(manifest(tmp_path, max_file_bytes=1000, retention_files=2))
    for i in range(6):
        post(server, "/v2/models/simple/infer", simple_body(i))
    server.stop()
    assert len(list(log.parent.glob("inference.jsonl.*"))) == 2


def test_metrics_parse_and_match_the_requests(traced):
    server, _ = traced
    for i in range(5):
        assert post(server, "/v2/models/simple/infer", simple_body(i))[0] == 200
    assert post(server, "/v2/models/simple/infer", simple_body(1).replace("INT32", "FP32", 1))[0] == 400
    assert post(server, "/v2/models/nope/infer", simple_body(1))[0] == 404
    g = grpcclient.InferenceServerClient(url=server.grpc_address)
    a = np.ones((2, 16), dtype=np.int32)
    inputs = [grpcclient.InferInput("INPUT0", [2, 16], "INT32"), grpcclient.InferInput("INPUT1", [2, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    for _ in range(3):
        g.infer("simple", inputs)
    import http.client

    host, port = server.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port))
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}

    def value(family, suffix="", **labels):
        for s in families[family].samples:
            if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        raise KeyError((family, labels))

    simple = {"model": "simple", "version": "1"}
    assert value("oxinfer_requests", "_total", protocol="http", outcome="success", **simple) == 5
    assert value("oxinfer_requests", "_total", protocol="http", outcome="failure", **simple) == 1
    assert value("oxinfer_requests", "_total", protocol="grpc", outcome="success", **simple) == 3
    assert value("oxinfer_requests_rejected", "_total", protocol="http") == 1
    assert families["oxinfer_request_duration_seconds"].type == "histogram"
    assert value("oxinfer_request_duration_seconds", "_count", protocol="http", **simple) == 6
    assert value("oxinfer_compute_duration_seconds", "_count", **simple) == 8
    assert value("oxinfer_batch_size", "_bucket", le="1", **simple) == 5
    assert value("oxinfer_batch_size", "_bucket", le="2", **simple) == 8
    assert value("oxinfer_queue_duration_seconds", "_count", **simple) == 8
    assert value("oxinfer_queue_depth", **simple) == 0
    assert value("oxinfer_models_loaded") == 2
    assert value("oxinfer_inference_log_records_written", "_total") >= 0
    assert value("oxinfer_inference_log_records_dropped", "_total") == 0
    assert value("oxinfer_process_resident_memory_bytes") > 1_000_000


def test_the_example_traceability_manifest_pins_the_current_model():
    from conftest import ROOT

    result = run_oxinfer("check", "--manifest", str(ROOT / "examples" / "traceability.toml"))
    assert result.returncode == 0, result.stderr


def test_time_based_rotation(tmp_path):
    server = Server(manifest(tmp_path, rotate_seconds=1))
    assert post(server, "/v2/models/simple/infer", simple_body(1, "t-1"))[0] == 200
    time.sleep(1.2)
    assert post(server, "/v2/models/simple/infer", simple_body(2, "t-2"))[0] == 200
    server.stop()
    log = tmp_path / "audit" / "inference.jsonl"
    rotated = sorted(log.parent.glob("inference.jsonl.*"))
    assert len(rotated) == 1
    assert [r["request_id"] for r in log_records(rotated[0])] == ["t-1"]
    assert [r["request_id"] for r in log_records(log)] == ["t-2"]
    assert run_oxinfer("audit", "verify", str(rotated[0]), str(log)).returncode == 0


def test_json_logs(tmp_path):
    result = run_oxinfer("--log-format", "json", "check", "--manifest", str(manifest(tmp_path, log=False)))
    assert result.returncode == 0
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    loaded = [l for l in lines if l["fields"].get("message") == "model loaded"]
    assert {l["fields"]["model"] for l in loaded} == {"simple", "mlp"}
    assert all(l["level"] == "INFO" for l in loaded)
