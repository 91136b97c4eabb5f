"""tract on models it cannot compile with symbolic shapes: per-shape plans, through the manifest.

magika's classifier (from PyPI) falls back automatically; the example image model is forced to
per_shape with a cache of one plan and fed alternating resolutions. Outputs are checked against
Python onnxruntime / numpy (FP32, rtol=1e-5 atol=1e-5).
"""

import numpy as np
import pytest
import tritonclient.http as httpclient

from conftest import MODELS, Server, run_oxinfer, wait_for
from test_onnxruntime import MAGIKA_MODEL


def test_the_log_says_which_strategy_and_why(tmp_path):
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        f'[[models]]\nname = "magika"\nruntime = "tract"\npath = "{MAGIKA_MODEL}"\n'
        f'[[models]]\nname = "simple"\nruntime = "tract"\npath = "{MODELS / "simple.onnx"}"\n'
    )
    result = run_oxinfer("check", "--manifest", str(manifest))
    assert result.returncode == 0, result.stderr
    assert "tract cannot compile the model with symbolic dimensions" in result.stderr
    assert "BroadcastTo" in result.stderr
    assert 'model="magika"' in result.stderr and 'strategy="per_shape"' in result.stderr
    assert 'strategy="symbolic"' in result.stderr  # simple
    # Forcing symbolic on magika fails to load, with tract's reason.
    manifest.write_text(
        f'[[models]]\nname = "magika"\nruntime = "tract"\npath = "{MAGIKA_MODEL}"\n'
        '[models.options]\nstrategy = "symbolic"\n'
    )
    result = run_oxinfer("check", "--manifest", str(manifest))
    assert result.returncode != 0
    assert "BroadcastTo" in result.stderr


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    manifest = tmp_path_factory.mktemp("image") / "image.toml"
    manifest.write_text(
        f'[[models]]\nname = "image"\nruntime = "tract"\npath = "{MODELS / "image.onnx"}"\n'
        '[models.options]\nstrategy = "per_shape"\nplan_cache_size = 1\n'
        'warmup_shapes = [{ image = [1, 3, 8, 8] }]\n'
    )
    server = Server(manifest)
    yield server
    server.stop()


def test_alternating_resolutions_with_a_one_plan_cache(image_server):
    client = httpclient.InferenceServerClient(url=image_server.address)
    meta = client.get_model_metadata("image")
    assert meta["inputs"][0]["shape"] == [-1, 3, -1, -1]
    rng = np.random.default_rng(3)
    for shape in [(1, 3, 8, 8), (2, 3, 16, 12), (1, 3, 8, 8), (2, 3, 16, 12), (4, 3, 5, 9)]:
        x = rng.standard_normal(shape).astype(np.float32)
        inp = httpclient.InferInput("image", list(shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=False)
        result = client.infer("image", [inp])
        np.testing.assert_allclose(result.as_numpy("mean"), x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(result.as_numpy("max"), x.max(axis=(2, 3)))
    # The server's log is read by a thread of the test's: the last line may arrive just after
    # the last response.
    def compiled():
        return "".join(image_server.log).count("compiled a plan for new input shapes")

    wait_for(lambda: compiled() >= 5, what="five plan compilations in the log")
    assert compiled() == 5  # warmup + 4 misses (cache of 1)
    # The same counts in the statistics and in /metrics.
    stats = httpclient.InferenceServerClient(url=image_server.address).get_inference_statistics("image")
    counters = stats["model_stats"][0]["runtime_counters"]
    assert counters["plans_compiled"] == 5 and counters["plans_cached"] == 1
    assert counters["plan_cache_evictions"] == 4 and counters["plan_cache_hits"] == 1
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"{image_server.url}/metrics").read().decode()
    values = {
        s.labels["name"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "oxinfer_runtime_value"
        for s in f.samples
    }
    assert values["plans_compiled"] == 5 and values["plan_cache_hits"] == 1
