"""Conformance with tritonclient's HTTP client (JSON data) against a running oxinfer; every number
is checked against an independent reference (reference.py). The kserve SDK is driven from
kserve_checks.py (test_kserve.py), the gRPC clients from test_grpc.py.

Tolerances: FP32 outputs are compared with rtol=1e-5, atol=1e-6 (the reference evaluator and
numpy may order float operations differently from tract); integers and strings exactly.
"""

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from reference import evaluate, mlp_numpy

RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def triton(server):
    client = httpclient.InferenceServerClient(url=server.address)
    yield client
    client.close()


def test_triton_health_and_metadata(triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "oxinfer"
    assert isinstance(meta["extensions"], list)
    simple = triton.get_model_metadata("simple")
    assert simple["platform"] == "onnx_tract"
    assert [(i["name"], i["datatype"], i["shape"]) for i in simple["inputs"]] == [
        ("INPUT0", "INT32", [-1, 16]),
        ("INPUT1", "INT32", [-1, 16]),
    ]
    assert triton.get_model_metadata("mlp", model_version="1")["versions"] == ["1", "2"]
    assert triton.is_model_ready("simple")
    assert triton.is_model_ready("mlp", model_version="2")
    assert not triton.is_model_ready("mlp", model_version="7")
    assert not triton.is_model_ready("no-such-model")


def test_triton_infer_simple_json(triton):
    rng = np.random.default_rng(0)
    a = rng.integers(-1000, 1000, size=(3, 16), dtype=np.int32)
    b = rng.integers(-1000, 1000, size=(3, 16), dtype=np.int32)
    inputs = [httpclient.InferInput("INPUT0", [3, 16], "INT32"), httpclient.InferInput("INPUT1", [3, 16], "INT32")]
    inputs[0].set_data_from_numpy(a, binary_data=False)
    inputs[1].set_data_from_numpy(b, binary_data=False)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("OUTPUT0", "OUTPUT1")]
    result = triton.infer("simple", inputs, outputs=outputs, request_id="t-1")
    ref = evaluate("simple.onnx", {"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), ref["OUTPUT0"])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), ref["OUTPUT1"])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    response = result.get_response()
    assert response["id"] == "t-1"
    assert response["model_name"] == "simple"
    assert response["model_version"] == "1"


@pytest.mark.parametrize("version", ["1", "2", ""])
def test_triton_infer_mlp_matches_two_references(triton, version):
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    inp = httpclient.InferInput("x", [5, 4], "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    outputs = [httpclient.InferRequestedOutput("probs", binary_data=False)]
    result = triton.infer("mlp", [inp], model_version=version, outputs=outputs)
    served = version or "2"
    assert result.get_response()["model_version"] == served
    file = "mlp.onnx" if served == "1" else "mlp_v2.onnx"
    assert result.as_numpy("logits") is None, "only the requested output is returned"
    probs = result.as_numpy("probs")
    np.testing.assert_allclose(probs, evaluate(file, {"x": x})["probs"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(probs, mlp_numpy(file, x)[1], rtol=RTOL, atol=ATOL)


def test_triton_all_outputs_by_default(triton):
    x = np.ones((1, 4), dtype=np.float32)
    inp = httpclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    # No outputs named: tritonclient asks for binary_data_output, the server answers in JSON.
    result = triton.infer("mlp", [inp], model_version="1")
    logits, probs = mlp_numpy("mlp.onnx", x)
    np.testing.assert_allclose(result.as_numpy("logits"), logits, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(result.as_numpy("probs"), probs, rtol=RTOL, atol=ATOL)


DTYPES = {
    "BOOL": np.array([[True, False], [False, False]]),
    "UINT8": np.array([[0, 255], [1, 2]], dtype=np.uint8),
    "UINT16": np.array([[0, 65535], [1, 2]], dtype=np.uint16),
    "UINT32": np.array([[0, 2**32 - 1], [1, 2]], dtype=np.uint32),
    "UINT64": np.array([[0, 2**64 - 1], [1, 2]], dtype=np.uint64),
    "INT8": np.array([[-128, 127], [1, 2]], dtype=np.int8),
    "INT16": np.array([[-32768, 32767], [1, 2]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 2], [1, 2]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1], [1, 2]], dtype=np.int64),
    "FP32": np.array([[1.5, -2.25], [1e-30, 3e38]], dtype=np.float32),
    "FP64": np.array([[1e-300, -2.5], [1e300, 0.0]], dtype=np.float64),
    "BYTES": np.array([[b"hello", "h\u00e9llo".encode()], [b"", b"x y"]], dtype=np.object_),
}


def test_triton_every_json_datatype(triton):
    feeds = dict(DTYPES)
    inputs = []
    for name, arr in feeds.items():
        i = httpclient.InferInput(f"in_{name}", list(arr.shape), name)
        i.set_data_from_numpy(arr, binary_data=False)
        inputs.append(i)
    fp16 = httpclient.InferInput("in_FP16", [2, 2], "FP16")
    # tritonclient refuses to put FP16 in JSON (Triton does too); oxinfer accepts JSON numbers
    # for FP16, so the data is set by hand.
    fp16._data = [0.5, -1.0, 2.0, 0.0]
    inputs.append(fp16)
    outputs = [httpclient.InferRequestedOutput(f"out_{n}", binary_data=False) for n in list(feeds) + ["FP16"]]
    result = triton.infer("dtypes", inputs, outputs=outputs)
    ref_feeds = {f"in_{n}": a for n, a in feeds.items()}
    ref_feeds["in_BYTES"] = ref_feeds["in_BYTES"].astype(object)
    ref_feeds["in_FP16"] = np.array([[0.5, -1.0], [2.0, 0.0]], dtype=np.float16)
    ref = evaluate("dtypes.onnx", ref_feeds)
    for name in feeds:
        got = result.as_numpy(f"out_{name}")
        want = ref[f"out_{name}"]
        if name == "BYTES":
            # tritonclient hands JSON strings back as str.
            as_text = [[v.decode() if isinstance(v, bytes) else v for v in row] for row in want.tolist()]
            assert got.tolist() == as_text
        else:
            assert got.dtype == want.dtype, name
            np.testing.assert_array_equal(got, want, err_msg=name)
    np.testing.assert_array_equal(result.as_numpy("out_FP16").astype(np.float16), ref["out_FP16"])


def test_triton_errors_are_reported(triton):
    bad = httpclient.InferInput("INPUT0", [1, 8], "INT32")
    bad.set_data_from_numpy(np.zeros((1, 8), dtype=np.int32), binary_data=False)
    other = httpclient.InferInput("INPUT1", [1, 8], "INT32")
    other.set_data_from_numpy(np.zeros((1, 8), dtype=np.int32), binary_data=False)
    with pytest.raises(InferenceServerException, match=r"shape \[1, 8\] does not match the model's \[-1, 16\]"):
        triton.infer("simple", [bad, other])
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        triton.get_model_metadata("nope")
    # And the server keeps serving.
    assert triton.is_server_ready()
