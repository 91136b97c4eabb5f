"""Models laid out as Triton and KServe users keep them, through the real binary: a model
repository with version policies and runtime detection, new versions picked up by --watch, the
single-model form (--model-dir / --model-name) with each detected runtime, and version policies
in manifest entries."""

import os
import pathlib
import shutil
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import MODELS, Server, _binary, run_oxinfer
from reference import mlp_numpy

X = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.5, 1.0, -0.25, 2.0]}]}


def index(server):
    r = requests.post(f"{server.url}/v2/repository/index", json={}, timeout=10)
    return {(m["name"], m["version"]): (m["state"], m.get("reason", "")) for m in r.json()}


def runtime(server, model):
    return requests.get(f"{server.url}/v2/models/{model}/config", timeout=10).json()["parameters"]["runtime"]["string_value"]


def wait_for(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def put(path, source):
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, path)


def test_a_model_repository_with_version_policies_and_detected_runtimes(tmp_path):
    repo = tmp_path / "repo"
    put(repo / "mlp" / "1" / "model.onnx", MODELS / "mlp.onnx")
    put(repo / "mlp" / "2" / "model.onnx", MODELS / "mlp_v2.onnx")
    put(repo / "simple" / "3" / "simple.onnx", MODELS / "simple.onnx")
    (repo / "simple" / "model.toml").write_text('runtime = "tract"\nversion_policy = { all = true }\n[scheduler]\ninstances = 2\n')
    (repo / "simple" / "notes").mkdir()
    server = Server(None, "--model-repository", str(repo), "--watch", "--watch-interval-ms", "200")
    try:
        found = index(server)
        assert found[("mlp", "2")][0] == "READY"
        assert found[("mlp", "1")] == ("UNAVAILABLE", "not selected by version_policy { latest = 1 }")
        assert found[("simple", "3")][0] == "READY"
        assert runtime(server, "mlp") == "onnxruntime (detected from the files)"
        assert runtime(server, "simple") == "tract"
        assert requests.post(f"{server.url}/v2/models/mlp/infer", json=X, timeout=10).json()["model_version"] == "2"
        assert requests.post(f"{server.url}/v2/models/mlp/versions/1/infer", json=X, timeout=10).status_code == 503
        assert any('runtime_detected=true' in line and 'model="mlp"' in line for line in server.log)
        # A new version directory appears: served, and the one before it retires (latest 1).
        staged = tmp_path / "staging"
        put(staged / "model.onnx", MODELS / "mlp.onnx")
        staged.rename(repo / "mlp" / "3")
        assert wait_for(lambda: index(server).get(("mlp", "3"), ("",))[0] == "READY"), index(server)
        assert wait_for(lambda: index(server)[("mlp", "2")][0] == "UNAVAILABLE"), index(server)
        assert requests.post(f"{server.url}/v2/models/mlp/infer", json=X, timeout=10).json()["model_version"] == "3"
    finally:
        server.stop()
    assert server.proc.returncode == 0


def test_grpc_answers_each_message_with_the_version_it_names(tmp_path):
    """Two versions of a model served at once: a gRPC message is answered by the version it
    names (the highest when it names none), the version number read as over REST ("01" is 1),
    by that version's model; a version the server does not have is NOT_FOUND. (The codec finds
    the model to check the message's inputs against it, and the handler runs that one.)"""
    repo = tmp_path / "repo"
    put(repo / "mlp" / "1" / "model.onnx", MODELS / "mlp.onnx")
    put(repo / "mlp" / "2" / "model.onnx", MODELS / "mlp_v2.onnx")
    (repo / "mlp" / "model.toml").write_text('runtime = "tract"\nversion_policy = { all = true }\n')
    server = Server(None, "--model-repository", str(repo))
    x = np.array([[0.5, 1.0, -0.25, 2.0]], dtype=np.float32)
    inp = grpcclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    client = grpcclient.InferenceServerClient(url=server.grpc_address)
    try:
        v1, v2 = mlp_numpy("mlp.onnx", x)[1], mlp_numpy("mlp_v2.onnx", x)[1]
        assert not np.allclose(v1, v2, rtol=1e-3)
        for asked, served, probs in (("", "2", v2), ("1", "1", v1), ("2", "2", v2), ("01", "1", v1), ("1", "1", v1)):
            result = client.infer("mlp", [inp], model_version=asked, outputs=[grpcclient.InferRequestedOutput("probs")])
            assert result.get_response().model_version == served, asked
            np.testing.assert_allclose(result.as_numpy("probs"), probs, rtol=1e-5, atol=1e-6)
        with pytest.raises(InferenceServerException) as refused:
            client.infer("mlp", [inp], model_version="9")
        assert refused.value.status() == "StatusCode.NOT_FOUND"
        assert "unknown version '9' of model 'mlp' (versions: 1, 2)" in refused.value.message()
    finally:
        client.close()
        server.stop()
    assert server.proc.returncode == 0


def test_the_single_model_form_detects_each_runtime(tmp_path):
    minilm = pathlib.Path(os.environ["OXINFER_MINILM_DIR"])
    plugin = _binary().with_name("libedge_cases.so")
    versions = tmp_path / "versions"
    put(versions / "1" / "model.onnx", MODELS / "mlp.onnx")
    put(versions / "7" / "model.onnx", MODELS / "mlp_v2.onnx")
    for path, detected, version in (
        (MODELS / "mlp.onnx", "onnxruntime", "1"),
        (minilm, "candle", "1"),
        (plugin, "plugin", "1"),
        (versions, "onnxruntime", "7"),
    ):
        server = Server(None, "--model-dir", str(path), "--model-name", "served")
        try:
            assert runtime(server, "served") == f"{detected} (detected from the files)"
            meta = requests.get(f"{server.url}/v2/models/served", timeout=10).json()
            assert meta["name"] == "served" and meta["versions"] == [version], meta
            assert requests.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
        finally:
            server.stop()


def test_version_policies_in_the_manifest_and_clear_errors(tmp_path):
    versions = tmp_path / "mlp"
    for v, source in (("1", "mlp.onnx"), ("2", "mlp_v2.onnx"), ("3", "mlp.onnx")):
        put(versions / v / "model.onnx", MODELS / source)
    manifest = tmp_path / "m.toml"
    manifest.write_text(f'[[models]]\nname = "mlp"\nruntime = "tract"\npath = "{versions}"\nversion_policy = {{ specific = [1, 3] }}\n')
    server = Server(manifest)
    try:
        found = index(server)
        assert [found[("mlp", v)][0] for v in "123"] == ["READY", "UNAVAILABLE", "READY"]
    finally:
        server.stop()
    for text, needle in (
        (f'[[models]]\nname = "mlp"\nversion = 2\nruntime = "tract"\npath = "{versions}"\nversion_policy = {{ latest = 1 }}\n', "leave out `version`"),
        (f'[[models]]\nname = "mlp"\nruntime = "tract"\npath = "{versions}"\nversion_policy = {{ specific = [9] }}\n', "names version 9"),
        (f'[[models]]\nname = "mlp"\nruntime = "tract"\npath = "{versions}"\nversion_policy = {{ newest = 1 }}\n', "unknown variant `newest`"),
    ):
        manifest.write_text(text)
        r = run_oxinfer("check", "--manifest", str(manifest))
        assert r.returncode != 0 and needle in r.stderr, r.stderr
    repo = tmp_path / "repo"
    put(repo / "flat" / "model.onnx", MODELS / "mlp.onnx")
    r = run_oxinfer("check", "--model-repository", str(repo))
    assert r.returncode != 0 and "numbered directory" in r.stderr, r.stderr
    shutil.rmtree(repo / "flat")
    put(repo / "odd" / "1" / "weights.bin", MODELS / "mlp.onnx")
    r = run_oxinfer("check", "--model-repository", str(repo))
    assert r.returncode != 0 and "cannot tell which runtime" in r.stderr, r.stderr
    r = run_oxinfer("check", "--model-dir", str(MODELS / "mlp.onnx"))
    assert r.returncode != 0 and "--model-name" in r.stderr, r.stderr
