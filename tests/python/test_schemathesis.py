"""schemathesis against the real binary, from the OIP REST OpenAPI document (adapted only so that
requests name the served models: tests/python/openapi/open_inference_rest.yaml).

Generated and mutated requests (examples, schema coverage, fuzzing) must never get a 5xx, and
every error must be JSON (`schemathesis_hooks.errors_are_json`). Bounded: a fixed number of
examples per operation and a time budget.
"""

import os
import pathlib
import subprocess

from conftest import MODELS, ROOT, Server

HERE = pathlib.Path(__file__).parent


def test_no_server_errors_and_json_errors_everywhere(tmp_path):
    manifest = tmp_path / "m.toml"
    models = [("simple", "1"), ("mlp", "1"), ("mlp_v2", "2"), ("dtypes", "1"), ("image", "1")]
    manifest.write_text(
        "".join(
            f'[[models]]\nname = "{name.split("_")[0]}"\nversion = "{version}"\nruntime = "tract"\n'
            f'path = "{MODELS / (name + ".onnx")}"\n'
            for name, version in models
        )
    )
    server = Server(manifest)
    try:
        env = dict(os.environ, SCHEMATHESIS_HOOKS="schemathesis_hooks", PYTHONPATH=str(HERE))
        result = subprocess.run(
            [
                str(pathlib.Path(os.sys.executable).parent / "schemathesis"),
                "--no-color",
                "run",
                str(HERE / "openapi" / "open_inference_rest.yaml"),
                "--url",
                server.url,
                "--checks",
                "not_a_server_error,errors_are_json",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                "60",
                "--max-time",
                "120",
                "--workers",
                "2",
                "--seed",
                "1",
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=600,
        )
        print(result.stdout[-6000:])
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
        assert "passed" in result.stdout
    finally:
        server.stop()
    assert server.proc.returncode == 0, "".join(server.log[-50:])
