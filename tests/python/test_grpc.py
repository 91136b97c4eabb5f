"""tritonclient's gRPC client (raw tensors by default) against a running oxinfer, plus the
standard gRPC health service, streaming, and bad input. Numbers are checked against numpy and the
ONNX reference evaluator (reference.py); FP32 with rtol=1e-5, atol=1e-6.
"""

import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from reference import evaluate, mlp_numpy

RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def client(server):
    c = grpcclient.InferenceServerClient(url=server.grpc_address)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_address)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def simple_inputs(a, b):
    inputs = [grpcclient.InferInput("INPUT0", list(a.shape), "INT32"), grpcclient.InferInput("INPUT1", list(b.shape), "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def test_health_metadata_and_config(client, server):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert client.is_model_ready("mlp", "1")
    meta = client.get_server_metadata()
    assert meta.name == "oxinfer"
    assert "binary_tensor_data" in meta.extensions and "statistics" in meta.extensions
    m = client.get_model_metadata("simple", as_json=True)
    assert m["platform"] == "onnx_tract"
    assert [(i["name"], i["datatype"], i["shape"]) for i in m["inputs"]] == [("INPUT0", "INT32", ["-1", "16"]), ("INPUT1", "INT32", ["-1", "16"])]
    config = client.get_model_config("simple", as_json=True)["config"]
    assert config["name"] == "simple"
    assert config["backend"] == "tract"
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [("INPUT0", "TYPE_INT32", ["-1", "16"]), ("INPUT1", "TYPE_INT32", ["-1", "16"])]
    # The standard health service, as Kubernetes gRPC probes use it.
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    with grpc.insecure_channel(server.grpc_address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_infer_raw_and_requested_outputs(client):
    rng = np.random.default_rng(5)
    a = rng.integers(-100, 100, (2, 16), dtype=np.int32)
    b = rng.integers(-100, 100, (2, 16), dtype=np.int32)
    result = client.infer("simple", simple_inputs(a, b), request_id="g-1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response.id == "g-1" and response.model_version == "1"
    assert len(response.raw_output_contents) == 2
    x = rng.standard_normal((4, 4)).astype(np.float32)
    inp = grpcclient.InferInput("x", [4, 4], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp], model_version="1", outputs=[grpcclient.InferRequestedOutput("probs")])
    assert [o.name for o in result.get_response().outputs] == ["probs"]
    np.testing.assert_allclose(result.as_numpy("probs"), mlp_numpy("mlp.onnx", x)[1], rtol=RTOL, atol=ATOL)


def test_every_datatype_including_bytes_and_fp16(client):
    rng = np.random.default_rng(6)
    feeds = {
        "BOOL": rng.integers(0, 2, (3, 2)).astype(bool),
        "UINT8": rng.integers(0, 255, (3, 2), dtype=np.uint8),
        "UINT16": rng.integers(0, 65535, (3, 2), dtype=np.uint16),
        "UINT32": rng.integers(0, 2**32 - 1, (3, 2), dtype=np.uint32),
        "UINT64": rng.integers(0, 2**63, (3, 2), dtype=np.uint64),
        "INT8": rng.integers(-128, 127, (3, 2), dtype=np.int8),
        "INT16": rng.integers(-30000, 30000, (3, 2), dtype=np.int16),
        "INT32": rng.integers(-(2**30), 2**30, (3, 2), dtype=np.int32),
        "INT64": rng.integers(-(2**62), 2**62, (3, 2), dtype=np.int64),
        "FP16": rng.standard_normal((3, 2)).astype(np.float16),
        "FP32": rng.standard_normal((3, 2)).astype(np.float32),
        "FP64": rng.standard_normal((3, 2)),
        "BYTES": np.array([[b"a", b"with\x00nul"], [b"", "h\u00e9".encode()], [b"x" * 300, b"z"]], dtype=np.object_),
    }
    inputs = []
    for name, arr in feeds.items():
        i = grpcclient.InferInput(f"in_{name}", list(arr.shape), name)
        i.set_data_from_numpy(arr)
        inputs.append(i)
    result = client.infer("dtypes", inputs)
    ref = evaluate("dtypes.onnx", {f"in_{n}": a for n, a in feeds.items()})
    for name in feeds:
        got, want = result.as_numpy(f"out_{name}"), ref[f"out_{name}"]
        if name == "BYTES":
            assert got.tolist() == want.tolist()
        else:
            assert got.dtype == want.dtype, name
            np.testing.assert_array_equal(got, want, err_msg=name)
    # tract's string tensors hold text: bytes that are not UTF-8 are a clear INVALID_ARGUMENT.
    inputs[-1].set_data_from_numpy(np.array([[b"\xff", b"a"]] * 3, dtype=np.object_))
    with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT.*UTF-8"):
        client.infer("dtypes", inputs)


def test_stream_answers_in_order_and_survives_errors(client):
    results = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        ones = np.ones((1, 16), dtype=np.int32)
        for i in range(3):
            client.async_stream_infer("simple", simple_inputs(ones * i, ones), request_id=f"s-{i}")
        bad = grpcclient.InferInput("INPUT0", [1, 8], "INT32")
        bad.set_data_from_numpy(np.zeros((1, 8), dtype=np.int32))
        client.async_stream_infer("simple", [bad], request_id="s-bad")
        client.async_stream_infer("simple", simple_inputs(ones * 9, ones), request_id="s-9")
        got = [results.get(timeout=30) for _ in range(5)]
    finally:
        client.stop_stream()
    for i in range(3):
        result, error = got[i]
        assert error is None
        assert result.get_response().id == f"s-{i}"
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), ones * i + 1)
    assert got[3][0] is None and "INPUT0" in str(got[3][1])
    assert got[4][0].get_response().id == "s-9"
    np.testing.assert_array_equal(got[4][0].as_numpy("OUTPUT0"), ones * 10)


def raw_request(**overrides):
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        t = request.inputs.add(name=name, datatype="INT32")
        t.shape.extend([1, 16])
        request.raw_input_contents.append(np.arange(16, dtype=np.int32).tobytes())
    for key, value in overrides.items():
        setattr(request, key, value)
    return request


def test_bad_grpc_input_gets_the_right_status(stub, client):
    def code(request):
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(request)
        return e.value.code(), e.value.details()

    assert stub.ModelInfer(raw_request()).raw_output_contents[0] == (np.arange(16, dtype=np.int32) * 2).tobytes()
    c, msg = code(raw_request(model_name="nope"))
    assert c == grpc.StatusCode.NOT_FOUND and "unknown model 'nope'" in msg
    c, msg = code(raw_request(model_version="7"))
    assert c == grpc.StatusCode.NOT_FOUND
    short = raw_request()
    short.raw_input_contents[1] = b"\x00" * 60
    c, msg = code(short)
    assert c == grpc.StatusCode.INVALID_ARGUMENT and "needs 64 bytes of raw data, got 60" in msg
    wrong_shape = raw_request()
    del wrong_shape.inputs[1].shape[:]
    wrong_shape.inputs[1].shape.extend([2, 8])
    c, msg = code(wrong_shape)
    assert c == grpc.StatusCode.INVALID_ARGUMENT and "does not match the model's [-1, 16]" in msg
    mixed = raw_request()
    mixed.inputs[0].contents.int_contents.extend(range(16))
    c, msg = code(mixed)
    assert c == grpc.StatusCode.INVALID_ARGUMENT and "use one or the other" in msg
    missing_raw = raw_request()
    del missing_raw.raw_input_contents[1]
    c, msg = code(missing_raw)
    assert c == grpc.StatusCode.INVALID_ARGUMENT and "raw_input_contents has 1 entries" in msg
    typed = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        t = typed.inputs.add(name=name, datatype="INT32")
        t.shape.extend([1, 16])
        t.contents.int_contents.extend(range(16))
    assert stub.ModelInfer(typed).raw_output_contents[1] == np.zeros(16, dtype=np.int32).tobytes()
    # The server keeps serving.
    assert client.is_server_ready()


def test_statistics_count_real_requests(client):
    before = client.get_inference_statistics("simple", "1", as_json=True)["model_stats"][0]
    ones = np.ones((1, 16), dtype=np.int32)
    for _ in range(3):
        client.infer("simple", simple_inputs(ones, ones))
    after = client.get_inference_statistics("simple", "1", as_json=True)["model_stats"][0]
    success = lambda s: int(s["inference_stats"]["success"].get("count", 0))  # noqa: E731
    assert success(after) - success(before) == 3
    assert int(after["inference_stats"]["compute_infer"]["ns"]) > int(before["inference_stats"].get("compute_infer", {}).get("ns", 0))
    assert int(after["execution_count"]) >= 3


def test_messages_above_grpcs_default_4_mib_limit(client):
    # 400,000 rows x 4 FP32 = 6.4 MB each way, over tonic's 4 MiB default.
    x = np.random.default_rng(11).standard_normal((400_000, 4)).astype(np.float32)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp], model_version="1", outputs=[grpcclient.InferRequestedOutput("logits")])
    np.testing.assert_allclose(result.as_numpy("logits"), mlp_numpy("mlp.onnx", x)[0], rtol=1e-4, atol=1e-5)
