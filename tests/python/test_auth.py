"""Access control (`[auth]`) through the real binary: tokens by SHA-256, scopes and model lists,
both ways (allowed and refused) on REST, gRPC and the embedding APIs, with curl-like requests,
tritonclient HTTP and gRPC (`headers=`), the kserve SDK and the openai client; 401 vs 403 bodies
and codes; a refusal for a model the token may not use says nothing about whether it exists;
the token's name is the identity in the log records; refusals are counted and logged with the
client's address, never the secret; tokens_file and protect_health are re-read on SIGHUP."""

import hashlib
import json
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import openai
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import MODELS, Server, metric, run_oxinfer

SIMPLE = {
    "inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [3] * 16},
    ]
}
SECRETS = {"reader": "read-secret", "app": "app-secret", "ops": "ops-secret", "filed": "filed-secret"}


def digest(secret):
    return hashlib.sha256(secret.encode()).hexdigest()


def bearer(name):
    return {"Authorization": f"Bearer {SECRETS[name]}"}


def write_manifest(path, tokens_file, protect_health=False):
    words = MODELS / "words.onnx"
    path.write_text(
        f"""
[auth]
tokens_file = "{tokens_file.name}"
protect_health = {str(protect_health).lower()}

[[auth.tokens]]
name = "reader"
sha256 = "{digest(SECRETS['reader'])}"
scopes = ["read"]

[[auth.tokens]]
name = "app"
sha256 = "{digest(SECRETS['app'])}"
scopes = ["infer", "read"]
models = ["simple", "words"]

[[auth.tokens]]
name = "ops"
sha256 = "{digest(SECRETS['ops'])}"
scopes = ["admin", "metrics"]

[[models]]
name = "simple"
runtime = "tract"
path = "{MODELS / 'simple.onnx'}"

[[models]]
name = "mlp"
runtime = "tract"
path = "{MODELS / 'mlp.onnx'}"

[[models]]
name = "words"
runtime = "onnxruntime"
path = "{words}"
[models.embeddings]
input = "text"
output = "embedding"

[inference_log]
path = "log/inference.jsonl"
"""
    )


def write_tokens(path, names):
    path.write_text(
        "".join(
            f'[[tokens]]\nname = "{n}"\nsha256 = "{digest(SECRETS[n])}"\nscopes = ["infer", "read"]\n' for n in names
        )
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    tokens = root / "tokens.toml"
    write_tokens(tokens, ["filed"])
    manifest = root / "m.toml"
    write_manifest(manifest, tokens)
    server = Server(manifest)
    yield server, root
    server.stop()
    assert server.proc.returncode == 0, "".join(server.log)


def test_rest_scopes_and_models_both_ways(served):
    server, root = served
    url = server.url
    # No token, a wrong token, a token that is not a bearer token: 401 with WWW-Authenticate.
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {SECRETS['app']}"}):
        r = requests.post(f"{url}/v2/models/simple/infer", json=SIMPLE, headers=headers, timeout=10)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"
        assert "error" in r.json()
    # Probes stay open (protect_health = false).
    assert requests.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
    assert requests.get(f"{url}/v2/health/live", timeout=5).status_code == 200
    # read: metadata yes, inference no (403, not 401), metrics and repository no.
    assert requests.get(f"{url}/v2/models/mlp", headers=bearer("reader"), timeout=5).status_code == 200
    assert requests.get(f"{url}/v2", headers=bearer("reader"), timeout=5).status_code == 200
    r = requests.post(f"{url}/v2/models/simple/infer", json=SIMPLE, headers=bearer("reader"), timeout=10)
    assert r.status_code == 403 and "'infer' scope" in r.json()["error"], r.text
    assert requests.get(f"{url}/metrics", headers=bearer("reader"), timeout=5).status_code == 403
    assert requests.post(f"{url}/v2/repository/index", headers=bearer("reader"), timeout=5).status_code == 403
    # infer + read, restricted to simple and words.
    r = requests.post(f"{url}/v2/models/simple/infer", json=SIMPLE, headers={**bearer("app"), "x-request-id": "auth-app"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [i + 3 for i in range(16)]
    # A model it may not use, and a model that does not exist: the same 403, nothing revealed.
    refused = [
        requests.post(f"{url}/v2/models/{m}/infer", json=SIMPLE, headers=bearer("app"), timeout=10) for m in ("mlp", "nosuch")
    ]
    assert [r.status_code for r in refused] == [403, 403]
    assert [r.json()["error"] for r in refused] == ["token 'app' may not use model 'mlp'", "token 'app' may not use model 'nosuch'"]
    assert requests.get(f"{url}/v2/models/mlp/ready", headers=bearer("app"), timeout=5).status_code == 403
    assert requests.get(f"{url}/v2/models/mlp/config", headers=bearer("app"), timeout=5).status_code == 403
    # Statistics of all models: only those it may use.
    stats = requests.get(f"{url}/v2/models/stats", headers=bearer("app"), timeout=5).json()["model_stats"]
    assert {s["name"] for s in stats} == {"simple", "words"}
    # admin + metrics.
    assert requests.get(f"{url}/metrics", headers=bearer("ops"), timeout=5).status_code == 200
    index = requests.post(f"{url}/v2/repository/index", headers=bearer("ops"), timeout=5)
    assert index.status_code == 200 and {m["name"] for m in index.json()} == {"simple", "mlp", "words"}
    r = requests.post(f"{url}/v2/models/simple/infer", json=SIMPLE, headers=bearer("ops"), timeout=10)
    assert r.status_code == 403
    # The tokens file's token.
    r = requests.post(f"{url}/v2/models/mlp/infer", headers=bearer("filed"), timeout=10,
                      json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    assert r.status_code == 200, r.text


def test_tritonclient_http_and_grpc_with_headers(served):
    server, _ = served
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
    inputs[1].set_data_from_numpy(np.full((1, 16), 3, dtype=np.int32))
    client = httpclient.InferenceServerClient(server.address)
    result = client.infer("simple", inputs, headers=bearer("app"), request_id="auth-http")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0").reshape(-1), np.arange(16) + 3)
    with pytest.raises(InferenceServerException) as e:
        client.infer("simple", inputs, headers=bearer("reader"))
    assert "403" in str(e.value.status()) or "scope" in str(e.value)
    with pytest.raises(InferenceServerException):
        client.infer("simple", inputs)
    client.close()

    g = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    g[0].set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
    g[1].set_data_from_numpy(np.full((1, 16), 3, dtype=np.int32))
    client = grpcclient.InferenceServerClient(server.grpc_address)
    lower = lambda name: {"authorization": f"Bearer {SECRETS[name]}"}  # gRPC metadata keys are lowercase
    result = client.infer("simple", g, headers=lower("app"), request_id="auth-grpc")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1").reshape(-1), np.arange(16) - 3)
    for headers, code in ((None, "UNAUTHENTICATED"), (lower("reader"), "PERMISSION_DENIED")):
        with pytest.raises(InferenceServerException) as e:
            client.infer("simple", g, headers=headers)
        assert code in e.value.status(), e.value
    # A model it may not use and one that does not exist: the same refusal.
    messages = []
    for model in ("mlp", "nosuch"):
        with pytest.raises(InferenceServerException) as e:
            client.get_model_metadata(model, headers=lower("app"))
        assert "PERMISSION_DENIED" in e.value.status()
        messages.append(e.value.message())
    assert messages == ["token 'app' may not use model 'mlp'", "token 'app' may not use model 'nosuch'"]
    assert client.get_model_metadata("mlp", headers=lower("reader")).name == "mlp"
    # Probes without a token; the repository needs admin.
    assert client.is_server_ready() and client.is_server_live()
    with pytest.raises(InferenceServerException) as e:
        client.get_model_repository_index(headers=lower("app"))
    assert "PERMISSION_DENIED" in e.value.status()
    assert {m.name for m in client.get_model_repository_index(headers=lower("ops")).models} == {"simple", "mlp", "words"}
    stats = client.get_inference_statistics(headers=lower("app"))
    assert {s.name for s in stats.model_stats} == {"simple", "words"}
    client.close()


def test_kserve_sdk_with_a_token(served):
    server, _ = served
    script = pathlib.Path(__file__).parent / "kserve_checks.py"
    done = subprocess.run([sys.executable, str(script), "--auth", server.url, server.grpc_address, SECRETS["app"]],
                          capture_output=True, text=True, timeout=120, cwd=script.parent)
    assert done.returncode == 0, done.stdout + done.stderr


def test_openai_and_tei_routes_check_the_model_in_the_body(served):
    server, _ = served
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=SECRETS["app"], max_retries=0)
    r = client.embeddings.create(model="words", input=["cat"], encoding_format="float")
    assert len(r.data) == 1
    assert [m.id for m in client.models.list()] == ["words"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).embeddings.create(model="words", input=["cat"])
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key=SECRETS["reader"], max_retries=0).embeddings.create(model="words", input=["cat"])
    # filed (no model list) may use words; a token restricted elsewhere may not, exists or not.
    r = requests.post(f"{server.url}/embed", json={"inputs": "cat", "model": "words"}, headers=bearer("filed"), timeout=10)
    assert r.status_code == 200, r.text
    for model in ("mlp", "nosuch"):
        r = requests.post(f"{server.url}/embed", json={"inputs": "cat", "model": model}, headers=bearer("app"), timeout=10)
        assert r.status_code == 403 and f"may not use model '{model}'" in r.json()["error"], r.text


def test_identity_in_the_log_and_refusals_counted_and_logged(served):
    server, root = served
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        path = root / "log" / "inference.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        by_id = {r["request_id"]: r for r in records}
        if {"auth-app", "auth-http", "auth-grpc"} <= by_id.keys():
            break
        time.sleep(0.1)
    for request_id in ("auth-app", "auth-http", "auth-grpc"):
        assert by_id[request_id]["identity"] == "app", by_id[request_id]
    requests.get(f"{server.url}/v2/models/simple", timeout=5)  # no token
    assert metric(server.url, "oxinfer_auth_failures_total", headers=bearer("ops"), identity="", reason="missing") >= 1
    assert metric(server.url, "oxinfer_auth_failures_total", headers=bearer("ops"), identity="", reason="unknown") >= 1
    assert metric(server.url, "oxinfer_auth_failures_total", headers=bearer("ops"), identity="reader", reason="scope") >= 1
    assert metric(server.url, "oxinfer_auth_failures_total", headers=bearer("ops"), identity="app", reason="model") >= 1
    log = "".join(server.log)
    assert re.search(r"refused .*127\.0\.0\.1", log), log[-2000:]
    for secret in SECRETS.values():
        assert secret not in log


def test_tokens_file_and_protect_health_follow_sighup(tmp_path):
    tokens = tmp_path / "tokens.toml"
    write_tokens(tokens, ["filed"])
    manifest = tmp_path / "m.toml"
    write_manifest(manifest, tokens)
    server = Server(manifest)
    try:
        infer = lambda name: requests.post(f"{server.url}/v2/models/simple/infer", json=SIMPLE, headers=bearer(name), timeout=10).status_code
        assert infer("filed") == 200
        # Rotate: the file now holds another token; the old one stops working.
        SECRETS["rotated"] = "rotated-secret"
        write_tokens(tokens, ["rotated"])
        write_manifest(manifest, tokens, protect_health=True)
        reloaded = sum("manifest reloaded" in line for line in server.log)
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while sum("manifest reloaded" in line for line in server.log) == reloaded and time.monotonic() < deadline:
            time.sleep(0.1)
        assert infer("rotated") == 200
        assert infer("filed") == 401
        # protect_health: probes need read now.
        assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 401
        assert requests.get(f"{server.url}/v2/health/ready", headers=bearer("reader"), timeout=5).status_code == 200
    finally:
        server.stop()


def test_bad_auth_tables_are_refused_by_check(tmp_path):
    cases = [
        ('[[auth.tokens]]\nname = "a"\nsha256 = "not-a-digest"\nscopes = ["read"]\n', "64 hex digits"),
        ('[[auth.tokens]]\nname = "a"\nsha256 = "%s"\nscopes = []\n' % digest("x"), "scopes is empty"),
        ('[[auth.tokens]]\nname = "a"\nsha256 = "%s"\nscopes = ["root"]\n' % digest("x"), "unknown variant"),
        ('[[auth.tokens]]\nname = "a b"\nsha256 = "%s"\nscopes = ["read"]\n' % digest("x"), "token name"),
        ('[[auth.tokens]]\nname = "a"\nsha256 = "%s"\nscopes = ["read"]\n[[auth.tokens]]\nname = "b"\nsha256 = "%s"\nscopes = ["read"]\n'
         % (digest("x"), digest("x")), "same secret"),
        ('[auth]\ntokens_file = "missing.toml"\n', "missing.toml"),
        ('[[auth.tokens]]\nname = "a"\nsha256 = "%s"\nscopes = ["read"]\n' % digest(""), "empty secret"),
        ('[[auth.tokens]]\nname = "a"\nsha256 = "%s"\nscopes = ["read"]\nmodels = ["x%%41"]\n' % digest("x"), "not a model name"),
        ('[server]\nidle_timeout_seconds = 18446744073709551615\n', "more than a year"),
    ]
    for text, expected in cases:
        manifest = tmp_path / "m.toml"
        manifest.write_text(text)
        done = run_oxinfer("check", "--manifest", str(manifest))
        assert done.returncode == 1 and expected in done.stderr, (text, done.stderr)
    # `oxinfer token new` prints a secret whose digest is in the table it prints, which check accepts.
    done = run_oxinfer("token", "new", "--name", "fraud-api", "--scopes", "infer,read", "--models", "simple")
    assert done.returncode == 0, done.stderr
    secret = re.search(r"^# (oxi_[0-9a-f]{64})$", done.stdout, re.M).group(1)
    table = "\n".join(line for line in done.stdout.splitlines() if not line.startswith("#"))
    assert f'sha256 = "{digest(secret)}"' in table
    manifest = tmp_path / "m.toml"
    manifest.write_text(table + "\n")
    done = run_oxinfer("check", "--manifest", str(manifest))
    assert done.returncode == 0 and "access control on: 1 token(s)" in done.stdout, done.stdout + done.stderr
