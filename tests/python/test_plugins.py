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


def test_a_replaced_plugin_library_is_not_reloaded_under_its_new_digest(tmp_path):
    """Libraries are never unloaded, so a reload after a new build was installed over the
    plugin's file would run the old code under the new file's digest. Through the binary: the
    reload is refused with the reason, and the model keeps serving under the digest of the code
    that runs."""
    import hashlib
    import shutil
    import urllib.error
    import urllib.request

    library = tmp_path / "libscorer.so"
    shutil.copy(pathlib.Path(_binary()).with_name("libtabular_scorer.so"), library)
    original = hashlib.sha256(library.read_bytes()).hexdigest()
    scorer_dir = ROOT / "examples" / "models" / "scorer"
    manifest = tmp_path / "plugins.toml"
    manifest.write_text(
        f'[[models]]\nname = "scorer"\nruntime = "plugin"\npath = "{library}"\n'
        f'[models.options]\nmodel_dir = "{scorer_dir}"\n'
    )
    server = Server(manifest)
    body = json.dumps({"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [35, 52000, 0.2]}]}).encode()

    def post(path, data=b"{}"):
        req = urllib.request.Request(server.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    try:
        status, first = post("/v2/models/scorer/infer", body)
        assert status == 200, first
        assert first["parameters"]["model_sha256"] == original
        # A new build installed as deploys do: a new file renamed over the old one.
        staged = tmp_path / "libscorer.so.new"
        staged.write_bytes(library.read_bytes() + b"a new build")
        staged.rename(library)
        status, reply = post("/v2/repository/models/scorer/load")
        assert status >= 400, reply
        assert "has changed since it was loaded" in reply["error"] and "restart the server" in reply["error"], reply
        status, again = post("/v2/models/scorer/infer", body)
        assert status == 200, again
        assert again["parameters"]["model_sha256"] == original
        assert again["outputs"] == first["outputs"]
    finally:
        server.stop()
