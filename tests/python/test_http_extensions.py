"""Triton's HTTP extensions through tritonclient.http: binary tensor data (its default), BYTES,
compression, model configuration, statistics and the model repository; and the same request
through REST JSON, REST binary and gRPC giving byte-identical outputs.
"""

import gzip
import http.client
import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import ROOT, Server
from reference import evaluate, mlp_numpy

RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def triton(server):
    client = httpclient.InferenceServerClient(url=server.address)
    yield client
    client.close()


def test_server_metadata_lists_the_extensions(triton):
    assert set(triton.get_server_metadata()["extensions"]) == {
        "binary_tensor_data", "model_configuration", "statistics", "model_repository",
    }


def test_binary_inputs_and_outputs_by_default(triton):
    x = np.random.default_rng(7).standard_normal((3, 4)).astype(np.float32)
    inp = httpclient.InferInput("x", [3, 4], "FP32")
    inp.set_data_from_numpy(x)  # binary_data=True is tritonclient's default
    outputs = [httpclient.InferRequestedOutput("logits"), httpclient.InferRequestedOutput("probs", binary_data=False)]
    result = triton.infer("mlp", [inp], model_version="1", outputs=outputs)
    logits, probs = mlp_numpy("mlp.onnx", x)
    np.testing.assert_allclose(result.as_numpy("logits"), logits, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(result.as_numpy("probs"), probs, rtol=RTOL, atol=ATOL)
    response = result.get_response()
    assert response["outputs"][0]["parameters"] == {"binary_data_size": 3 * 3 * 4}
    assert "data" in response["outputs"][1] and "parameters" not in response["outputs"][1]


def test_bytes_fp16_and_every_type_in_binary(triton):
    rng = np.random.default_rng(8)
    feeds = {
        "BOOL": np.array([[True, False]] * 2), "UINT8": rng.integers(0, 255, (2, 2), dtype=np.uint8),
        "UINT16": rng.integers(0, 9999, (2, 2), dtype=np.uint16), "UINT32": rng.integers(0, 99999, (2, 2), dtype=np.uint32),
        "UINT64": rng.integers(0, 2**60, (2, 2), dtype=np.uint64), "INT8": rng.integers(-100, 100, (2, 2), dtype=np.int8),
        "INT16": rng.integers(-999, 999, (2, 2), dtype=np.int16), "INT32": rng.integers(-9999, 9999, (2, 2), dtype=np.int32),
        "INT64": rng.integers(-(2**60), 2**60, (2, 2), dtype=np.int64), "FP16": rng.standard_normal((2, 2)).astype(np.float16),
        "FP32": rng.standard_normal((2, 2)).astype(np.float32), "FP64": rng.standard_normal((2, 2)),
        "BYTES": np.array([[b"one", "tw\u00f6".encode()], [b"", b"x" * 1000]], dtype=np.object_),
    }
    inputs = []
    for name, arr in feeds.items():
        i = httpclient.InferInput(f"in_{name}", [2, 2], name)
        i.set_data_from_numpy(arr, binary_data=True)
        inputs.append(i)
    outputs = [httpclient.InferRequestedOutput(f"out_{n}", binary_data=True) for n in feeds]
    result = triton.infer("dtypes", inputs, outputs=outputs)
    ref = evaluate("dtypes.onnx", {f"in_{n}": a for n, a in feeds.items()})
    for name in feeds:
        got, want = result.as_numpy(f"out_{name}"), ref[f"out_{name}"]
        if name == "BYTES":
            assert got.tolist() == want.tolist()
        else:
            assert got.dtype == want.dtype, name
            np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_responses(triton, algorithm):
    x = np.random.default_rng(9).standard_normal((2, 4)).astype(np.float32)
    inp = httpclient.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    result = triton.infer("mlp", [inp], model_version="2", request_compression_algorithm=algorithm, response_compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy("probs"), mlp_numpy("mlp_v2.onnx", x)[1], rtol=RTOL, atol=ATOL)


def test_compressed_body_seen_on_the_wire(server):
    body = json.dumps({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}]}).encode()
    host, port = server.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port))
    conn.request("POST", "/v2/models/simple/infer", gzip.compress(body), {"Content-Encoding": "gzip", "Accept-Encoding": "gzip"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Encoding") == "gzip"
    decoded = json.loads(gzip.decompress(response.read()))
    assert decoded["outputs"][0]["data"] == list(range(1, 17))


def test_cpp_client_style_json_with_header(server):
    """perf_analyzer's C++ client always sends Inference-Header-Content-Length, even for JSON."""
    body = json.dumps({"id": "cpp", "inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [2] * 16},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}]}).encode()
    host, port = server.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port))
    conn.request("POST", "/v2/models/simple/infer", body,
                 {"Inference-Header-Content-Length": str(len(body)), "Content-Type": "application/json", "Expect": ""})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/json"
    assert json.loads(response.read())["id"] == "cpp"


def test_binary_outputs_follow_the_header_with_an_exact_content_length(server):
    """Binary outputs go out as their own buffers after the JSON header (not joined into one
    body); an HTTP/1.1 client still gets one Content-Length body, in output order."""
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    header = json.dumps({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "parameters": {"binary_data_size": 64}},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "parameters": {"binary_data_size": 64}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}},
                    {"name": "OUTPUT1", "parameters": {"binary_data": True}}]}).encode()
    host, port = server.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port))
    conn.request("POST", "/v2/models/simple/infer", header + a.tobytes() + b.tobytes(),
                 {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"})
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, body
    assert response.getheader("Transfer-Encoding") is None
    assert int(response.getheader("Content-Length")) == len(body)
    json_len = int(response.getheader("Inference-Header-Content-Length"))
    outputs = json.loads(body[:json_len])["outputs"]
    assert [o["name"] for o in outputs] == ["OUTPUT0", "OUTPUT1"]
    assert [o["parameters"]["binary_data_size"] for o in outputs] == [64, 64]
    assert body[json_len:] == (a + b).tobytes() + (a - b).tobytes()


def test_model_config(triton):
    config = triton.get_model_config("simple")
    assert config["name"] == "simple"
    assert config["platform"] == "onnx_tract" and config["backend"] == "tract"
    assert config["max_batch_size"] == 0
    assert config["input"] == [
        {"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [-1, 16]},
        {"name": "INPUT1", "data_type": "TYPE_INT32", "dims": [-1, 16]},
    ]
    assert triton.get_model_config("dtypes")["input"][-1]["data_type"] == "TYPE_STRING"
    assert triton.get_model_config("mlp", model_version="1")["name"] == "mlp"


def test_statistics_are_real_counters(triton):
    def success(version):
        stats = triton.get_inference_statistics("mlp", model_version=version)["model_stats"]
        assert len(stats) == 1 and stats[0]["version"] == version
        return stats[0]

    before = success("1")
    x = np.ones((5, 4), dtype=np.float32)
    inp = httpclient.InferInput("x", [5, 4], "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(4):
        triton.infer("mlp", [inp], model_version="1")
    bad = httpclient.InferInput("x", [5, 3], "FP32")
    bad.set_data_from_numpy(np.ones((5, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException):
        triton.infer("mlp", [bad], model_version="1")
    after = success("1")
    s0, s1 = before["inference_stats"], after["inference_stats"]
    assert s1["success"]["count"] - s0["success"]["count"] == 4
    assert s1["fail"]["count"] - s0["fail"]["count"] == 1
    assert after["inference_count"] - before["inference_count"] == 20  # 4 requests of batch 5
    assert after["execution_count"] - before["execution_count"] == 4
    for key in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert s1[key]["count"] - s0[key]["count"] >= 4
        assert s1[key]["ns"] > s0[key]["ns"]
    assert after["last_inference"] > 0
    everything = triton.get_inference_statistics()["model_stats"]
    assert {(m["name"], m["version"]) for m in everything} >= {("mlp", "1"), ("mlp", "2"), ("simple", "1")}


def test_same_request_is_byte_identical_over_json_binary_and_grpc(server):
    x = np.random.default_rng(10).standard_normal((6, 4)).astype(np.float32)
    http_client = httpclient.InferenceServerClient(url=server.address)
    grpc_client = grpcclient.InferenceServerClient(url=server.grpc_address)
    outputs = {}
    for mode in ("json", "binary"):
        inp = httpclient.InferInput("x", [6, 4], "FP32")
        inp.set_data_from_numpy(x, binary_data=(mode == "binary"))
        req = [httpclient.InferRequestedOutput(n, binary_data=(mode == "binary")) for n in ("logits", "probs")]
        result = http_client.infer("mlp", [inp], outputs=req)
        outputs[mode] = {n: result.as_numpy(n).astype(np.float32).tobytes() for n in ("logits", "probs")}
    inp = grpcclient.InferInput("x", [6, 4], "FP32")
    inp.set_data_from_numpy(x)
    result = grpc_client.infer("mlp", [inp])
    outputs["grpc"] = {n: result.as_numpy(n).tobytes() for n in ("logits", "probs")}
    assert outputs["json"] == outputs["binary"] == outputs["grpc"]
    http_client.close()
    grpc_client.close()


@pytest.fixture()
def repo_server():
    s = Server(ROOT / "examples" / "oxinfer.toml")
    yield s
    s.stop()


def test_repository_index_unload_and_load_over_http_and_grpc(repo_server):
    client = httpclient.InferenceServerClient(url=repo_server.address)
    grpc_client = grpcclient.InferenceServerClient(url=repo_server.grpc_address)
    index = client.get_model_repository_index()
    assert {"name": "mlp", "version": "2", "state": "READY", "reason": ""} in index
    x = np.ones((1, 4), dtype=np.float32)
    inp = httpclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    client.unload_model("mlp")
    assert not client.is_model_ready("mlp")
    assert not grpc_client.is_model_ready("mlp", "1")
    with pytest.raises(InferenceServerException, match="no version loaded"):
        client.infer("mlp", [inp])
    index = {(m["name"], m["version"]): m for m in client.get_model_repository_index()}
    assert index[("mlp", "1")]["state"] == "UNAVAILABLE" and index[("mlp", "1")]["reason"] == "unloaded"
    assert index[("simple", "1")]["state"] == "READY"
    assert client.is_model_ready("simple")
    grpc_client.load_model("mlp")  # re-reads the files listed in the manifest
    assert client.is_model_ready("mlp")
    np.testing.assert_allclose(client.infer("mlp", [inp]).as_numpy("probs"), mlp_numpy("mlp_v2.onnx", x)[1], rtol=RTOL, atol=ATOL)
    grpc_client.unload_model("simple")
    assert [m.name for m in grpc_client.get_model_repository_index(as_json=False).models if m.state == "READY"].count("simple") == 0
    client.load_model("simple")
    assert grpc_client.is_model_ready("simple")
    with pytest.raises(InferenceServerException, match="not in the manifest"):
        client.load_model("nope")
    with pytest.raises(InferenceServerException, match="not supported"):
        client.load_model("simple", config='{"max_batch_size": 8}')
    client.close()
    grpc_client.close()


def test_a_failed_reload_keeps_the_loaded_model_serving(tmp_path):
    import shutil

    model = tmp_path / "simple.onnx"
    shutil.copy(ROOT / "examples" / "models" / "simple.onnx", model)
    manifest = tmp_path / "m.toml"
    manifest.write_text(f'[[models]]\nname = "simple"\nruntime = "tract"\npath = "{model}"\n')
    server = Server(manifest)
    try:
        client = httpclient.InferenceServerClient(url=server.address)
        model.write_bytes(b"corrupted on disk")
        with pytest.raises(InferenceServerException, match="tract could not load"):
            client.load_model("simple")
        assert client.is_model_ready("simple")
        a = np.ones((1, 16), dtype=np.int32)
        inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(a)
        np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), a * 2)
        # Once unloaded, a failing load leaves it unavailable, with the reason.
        client.unload_model("simple")
        with pytest.raises(InferenceServerException):
            client.load_model("simple")
        entry = client.get_model_repository_index()[0]
        assert entry["state"] == "UNAVAILABLE" and "load failed" in entry["reason"]
    finally:
        server.stop()
