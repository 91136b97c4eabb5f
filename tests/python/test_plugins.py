"""The example tabular-scorer plugin over gRPC (tritonclient), checked against numpy."""

import json
import pathlib

import numpy as np
import tritonclient.grpc as grpcclient

from conftest import ROOT, Server, _binary


def test_scorer_plugin_over_grpc(tmp_path):
    library = pathlib.Path(_binary()).with_name("libtabular_scorer.so")
    assert library.exists(), f"{library}: run `cargo build --workspace` (scripts/test.sh does)"
    scorer_dir = ROOT / "examples" / "models" / "scorer"
    manifest = tmp_path / "plugins.toml"
    manifest.write_text(
        f'[[models]]\nname = "scorer"\nruntime = "plugin"\npath = "{library}"\n'
        f'[models.options]\nmodel_dir = "{scorer_dir}"\nthreshold = 0.3\n'
    )
    server = Server(manifest)
    try:
        client = grpcclient.InferenceServerClient(url=server.grpc_address)
        x = np.array([[35, 52000, 0.2], [22, 18000, 0.9], [61, 120000, 0.05], [40, 0, 0.6]], dtype=np.float32)
        inp = grpcclient.InferInput("features", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("scorer", [inp])
        model = json.loads((scorer_dir / "model.json").read_text())
        z = x.astype(np.float64) @ np.array(model["coefficients"]) + model["intercept"]
        want = 1 / (1 + np.exp(-z))
        np.testing.assert_allclose(result.as_numpy("probability"), want, rtol=1e-5, atol=1e-6)
        labels = [model["labels"][int(p >= 0.3)].encode() for p in want]
        assert result.as_numpy("label").tolist() == labels
    finally:
        server.stop()
