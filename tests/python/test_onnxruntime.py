"""The onnxruntime runtime against tract and against Python onnxruntime (the reference).

The same example models are served by both runtimes through one manifest; the outputs must agree
with each other and with `onnxruntime.InferenceSession` on the same inputs. A real third-party
model, magika's ONNX classifier (from the `magika` PyPI package), is checked the same way.

Tolerances: integer, bool and string outputs exactly; FP32 with rtol=1e-5, atol=1e-6 (same graph,
different kernels); magika's FP32 scores (probabilities) with rtol=1e-3, atol=1e-4 and the same
top-1 class.
"""

import glob
import os
import pathlib
import shutil

import magika
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from conftest import MODELS, ROOT, Server, run_oxinfer

MAGIKA_MODEL = pathlib.Path(glob.glob(os.path.join(os.path.dirname(magika.__file__), "models", "*", "model.onnx"))[0])
EXAMPLES = ["simple", "mlp", "dtypes"]


def manifest_text(extra=""):
    entries = []
    for model in EXAMPLES:
        for runtime in ("tract", "onnxruntime"):
            entries.append(
                f'[[models]]\nname = "{model}-{runtime}"\nruntime = "{runtime}"\npath = "{MODELS / (model + ".onnx")}"\n'
            )
    entries.append(
        f'[[models]]\nname = "magika"\nruntime = "onnxruntime"\npath = "{MAGIKA_MODEL}"\n'
        '[models.options]\nintra_op_threads = 1\ngraph_optimization_level = "all"\n'
    )
    # tract cannot compile magika with a symbolic batch (a BroadcastTo whose shape input has a
    # variable length); strategy auto falls back to one plan per input-shape signature.
    entries.append(
        f'[[models]]\nname = "magika-tract"\nruntime = "tract"\npath = "{MAGIKA_MODEL}"\n'
        '[models.options]\nplan_cache_size = 4\n'
    )
    return extra + "\n".join(entries)


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    manifest = tmp_path_factory.mktemp("parity") / "parity.toml"
    manifest.write_text(manifest_text())
    server = Server(manifest)
    client = httpclient.InferenceServerClient(url=server.address)
    yield client
    client.close()
    server.stop()
    assert server.proc.returncode == 0


def reference(model_path, feeds):
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def infer(client, model, feeds):
    inputs = []
    for name, arr in feeds.items():
        dt = {np.dtype(np.float16): "FP16"}.get(arr.dtype) or httpclient.np_to_triton_dtype(arr.dtype)
        i = httpclient.InferInput(name, list(arr.shape), dt)
        if dt == "FP16":
            i._data = [float(v) for v in arr.flatten()]  # oxinfer accepts FP16 as JSON numbers
        else:
            i.set_data_from_numpy(arr, binary_data=False)
        inputs.append(i)
    result = client.infer(model, inputs)
    response = result.get_response()
    outputs = {}
    for o in response["outputs"]:
        arr = result.as_numpy(o["name"])
        if o["datatype"] == "FP16":
            arr = arr.astype(np.float16)
        outputs[o["name"]] = arr
    return response, outputs


def assert_same(got, want, name):
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got.astype(want.dtype), want, rtol=1e-5, atol=1e-6, err_msg=name)
    elif want.dtype == object:
        as_text = np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v, otypes=[object])
        assert as_text(got).tolist() == as_text(want).tolist(), name
    else:
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def example_feeds(model, batch):
    rng = np.random.default_rng(batch)
    if model == "simple":
        return {n: rng.integers(-100, 100, (batch, 16), dtype=np.int32) for n in ("INPUT0", "INPUT1")}
    if model == "mlp":
        return {"x": rng.standard_normal((batch, 4)).astype(np.float32)}
    feeds = {
        "in_BOOL": rng.integers(0, 2, (batch, 2)).astype(bool),
        "in_FP16": rng.standard_normal((batch, 2)).astype(np.float16),
        "in_FP32": rng.standard_normal((batch, 2)).astype(np.float32),
        "in_FP64": rng.standard_normal((batch, 2)),
        "in_BYTES": np.array([[f"s{i}", "h\u00e9"] for i in range(batch)], dtype=object),
    }
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64):
        info = np.iinfo(dt)
        feeds[f"in_{httpclient.np_to_triton_dtype(np.dtype(dt))}"] = rng.integers(info.min, info.max, (batch, 2), dtype=dt, endpoint=False)
    return feeds


@pytest.mark.parametrize("model", EXAMPLES)
@pytest.mark.parametrize("batch", [1, 4])
def test_both_runtimes_match_python_onnxruntime(parity, model, batch):
    feeds = example_feeds(model, batch)
    want = reference(MODELS / f"{model}.onnx", feeds)
    for runtime in ("tract", "onnxruntime"):
        response, got = infer(parity, f"{model}-{runtime}", feeds)
        assert set(got) == set(want)
        for name in want:
            assert_same(got[name], want[name], f"{model}-{runtime}:{name}")


def test_metadata_platform_and_types(parity):
    meta = parity.get_model_metadata("dtypes-onnxruntime")
    assert meta["platform"] == "onnxruntime_onnx"
    assert {i["datatype"] for i in meta["inputs"]} == {
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES",
    }
    assert parity.get_model_metadata("dtypes-tract")["inputs"] == meta["inputs"]
    for name in ("magika", "magika-tract"):
        magika_meta = parity.get_model_metadata(name)
        assert magika_meta["inputs"] == [{"name": "bytes", "datatype": "INT32", "shape": [-1, 2048]}]
        assert magika_meta["outputs"] == [{"name": "target_label", "datatype": "FP32", "shape": [-1, 214]}]


MAGIKA_INPUT_FILES = [
    "README.md",
    "Cargo.toml",
    "examples/models/simple.onnx",
    "docs/oxinfer_plugin.h",
    "examples/models/make_models.py",
    "examples/oxinfer.toml",
    "crates/core/src/tensor.rs",
    "bench/simple.lua",
]


def magika_features(batch):
    """Rows of 2048 byte values (256 pads), from the beginnings of fixed files of this repo."""
    rows = []
    for name in MAGIKA_INPUT_FILES[:batch]:
        data = (ROOT / name).read_bytes()[:2048]
        rows.append(list(data) + [256] * (2048 - len(data)))
    return np.array(rows, dtype=np.int32)


@pytest.mark.parametrize("model", ["magika", "magika-tract"])
@pytest.mark.parametrize("batch", [1, 5])
def test_magika_real_model_matches_python_onnxruntime(parity, model, batch):
    x = magika_features(batch)
    want = reference(MAGIKA_MODEL, {"bytes": x})["target_label"]
    _, got = infer(parity, model, {"bytes": x})
    # Scores are softmax probabilities; tract and onnxruntime sum in different orders.
    np.testing.assert_allclose(got["target_label"], want, rtol=1e-3, atol=1e-4)
    assert (got["target_label"].argmax(axis=1) == want.argmax(axis=1)).all()


def test_ort_errors_are_400s_and_the_server_keeps_serving(parity):
    bad = httpclient.InferInput("bytes", [1, 2047], "INT32")
    bad.set_data_from_numpy(np.zeros((1, 2047), dtype=np.int32), binary_data=False)
    with pytest.raises(Exception, match=r"shape \[1, 2047\] does not match the model's \[-1, 2048\]"):
        parity.infer("magika", [bad])
    assert parity.is_model_ready("magika")
    test_magika_real_model_matches_python_onnxruntime(parity, "magika", 1)


def _env_without_ort(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DYLIB_PATH", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/bin:/bin"  # no Python with onnxruntime on it
    env.update(extra)
    return env


def _check(tmp_path, extra="", env=None):
    manifest = tmp_path / "m.toml"
    manifest.write_text(manifest_text(extra))
    return run_oxinfer("check", "--manifest", str(manifest), env=env)


def test_library_found_from_the_python_environment(tmp_path):
    venv_bin = str(pathlib.Path(ort.__file__).parents[4] / "bin")
    result = _check(tmp_path, env=_env_without_ort(PATH=f"{venv_bin}:/usr/bin:/bin"))
    assert result.returncode == 0, result.stderr
    assert "onnxruntime/capi/libonnxruntime.so.1.31.1" in result.stderr


def test_manifest_setting_comes_before_ort_dylib_path(tmp_path):
    library = pathlib.Path(ort.__file__).parent / "capi" / "libonnxruntime.so.1.31.1"
    result = _check(
        tmp_path,
        f'[runtimes.onnxruntime]\nlibrary = "{library}"\n\n',
        env=_env_without_ort(ORT_DYLIB_PATH="/nonexistent/libonnxruntime.so"),
    )
    assert result.returncode == 0, result.stderr


def test_missing_library_says_how_to_get_it(tmp_path):
    result = _check(tmp_path, env=_env_without_ort())
    assert result.returncode != 0
    assert "ONNX Runtime library not found" in result.stderr
    assert "pip install onnxruntime==1.31.1" in result.stderr
    assert "ORT_DYLIB_PATH" in result.stderr
    # A manifest that does not use onnxruntime is unaffected.
    result = run_oxinfer("check", "--manifest", str(ROOT / "examples" / "oxinfer.toml"), env=_env_without_ort())
    assert result.returncode == 0, result.stderr


def test_a_library_that_is_not_onnxruntime_is_refused_clearly(tmp_path):
    not_ort = tmp_path / "libonnxruntime.so.1.31.1"
    shutil.copy(np.__file__, not_ort)  # a file that is not a shared library at all
    result = _check(tmp_path, env=_env_without_ort(ORT_DYLIB_PATH=str(not_ort)))
    assert result.returncode != 0
    assert f"cannot use the ONNX Runtime library {not_ort}" in result.stderr
    assert "pip install onnxruntime==1.31.1" in result.stderr


def test_unavailable_provider_is_a_clear_error(tmp_path):
    manifest = tmp_path / "cuda.toml"
    manifest.write_text(
        f'[[models]]\nname = "m"\nruntime = "onnxruntime"\npath = "{MODELS / "simple.onnx"}"\n'
        '[models.options]\nexecution_providers = ["cuda", "cpu"]\n'
    )
    result = run_oxinfer("check", "--manifest", str(manifest))
    assert result.returncode != 0
    assert "execution provider 'cuda' is not available" in result.stderr
    manifest.write_text(manifest.read_text() + 'on_unavailable_provider = "fallback"\n')
    result = run_oxinfer("check", "--manifest", str(manifest))
    assert result.returncode == 0, result.stderr
    assert "falling back to the next provider" in result.stderr


def test_the_example_onnxruntime_manifest_loads():
    result = run_oxinfer("check", "--manifest", str(ROOT / "examples" / "onnxruntime.toml"))
    assert result.returncode == 0, result.stderr
    assert "OK, 2 model(s)" in result.stdout
    # It asks for CUDA first; the PyPI wheel has none, so the chosen fallback is logged.
    assert "execution provider 'cuda' is not available" in result.stderr
