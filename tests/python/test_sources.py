"""Models from where they live, against real servers started here: an MLflow tracking server
(`mlflow server`, SQLite backend, --serve-artifacts) where models are logged with
mlflow.onnx.log_model, registered and aliased; an S3-compatible server (moto in server mode);
and a local HTTPS server with a test CA. Nothing is mocked inside oxinfer: it talks to these
servers over the network, and to the content-addressed cache on disk."""

import hashlib
import json
import os
import pathlib
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from conftest import MODELS, Relay, Server, free_port, run_oxinfer, wait_for
from test_security import Pki

VENV_BIN = pathlib.Path(sys.executable).parent
X = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.5, 1.0, -0.25, 2.0]}]}


def sha256(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def infer(server, model):
    r = requests.post(f"{server.url}/v2/models/{model}/infer", json=X, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def parameters(server, model):
    r = requests.get(f"{server.url}/v2/models/{model}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["parameters"]


def blobs(cache):
    return sorted(p.name for p in (cache / "blobs" / "sha256").iterdir()) if (cache / "blobs").exists() else []


def leftovers(cache):
    return list((cache / "tmp").iterdir()) if (cache / "tmp").exists() else []


# --- the real servers ---------------------------------------------------------------------------


class Registry:
    """`mlflow server` with a SQLite backend and proxied artifacts, and a client for it."""

    def __init__(self, root, artifacts=None, env=None):
        """`artifacts`: the server's artifact options (default: proxied, under root/artifacts)."""
        import mlflow

        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        artifacts = artifacts or ["--artifacts-destination", str(root / "artifacts"), "--serve-artifacts"]
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db", *artifacts,
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=open(root / "mlflow.log", "w"),
            # No background job runner (its worker processes only cost CPU here).
            env={**(env or os.environ), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            start_new_session=True,  # its own process group: stop() ends uvicorn with it
        )

        def healthy():
            try:
                return urllib.request.urlopen(f"{self.url}/health", timeout=1).status == 200
            except OSError:
                assert self.proc.poll() is None, (root / "mlflow.log").read_text()
                return False

        wait_for(healthy, timeout=120, what="the MLflow server")
        mlflow.set_tracking_uri(self.url)
        self.mlflow = mlflow
        self.client = mlflow.MlflowClient(self.url)

    def log_onnx(self, name, path):
        """Logs an ONNX file with mlflow.onnx.log_model and registers it; returns (version, run id)."""
        import onnx

        self.mlflow.set_tracking_uri(self.url)
        with self.mlflow.start_run() as run:
            info = self.mlflow.onnx.log_model(onnx.load(str(path)), name="model", registered_model_name=name)
        return info.registered_model_version, run.info.run_id

    def log_directory(self, name, directory):
        """Logs a directory as it is (its own MLmodel) and registers it; returns the version."""
        self.mlflow.set_tracking_uri(self.url)
        with self.mlflow.start_run() as run:
            self.mlflow.log_artifacts(str(directory), "model")
        version = self.client.create_model_version(name if self._exists(name) else self._create(name),
                                                   f"{run.info.artifact_uri}/model", run.info.run_id)
        return version.version

    def _exists(self, name):
        try:
            self.client.get_registered_model(name)
            return True
        except Exception:
            return False

    def _create(self, name):
        self.client.create_registered_model(name)
        return name

    def artifact(self, name, version, file):
        """A file of a version's artifacts, as the registry serves it."""
        location = self.client.get_model_version_download_uri(name, version)
        path = location.removeprefix("mlflow-artifacts:/").strip("/")
        with urllib.request.urlopen(f"{self.url}/api/2.0/mlflow-artifacts/artifacts/{path}/{file}") as r:
            return r.read()

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    r = Registry(tmp_path_factory.mktemp("mlflow"))
    yield r
    r.stop()


class S3:
    """moto in server mode: an S3-compatible endpoint over plain HTTP."""

    def __init__(self, root):
        import boto3

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=open(root / "moto.log", "w"))

        def up():
            try:
                return urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).status == 200
            except OSError:
                assert self.proc.poll() is None, (root / "moto.log").read_text()
                return False

        wait_for(up, timeout=60, what="the moto S3 server")
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
        self.client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                                   aws_secret_access_key="testing", region_name="us-east-1")
        self.client.create_bucket(Bucket="models")

    def put(self, key, path):
        self.client.upload_file(str(path), "models", key)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    s = S3(tmp_path_factory.mktemp("moto"))
    yield s
    s.stop()


class Files(ThreadingHTTPServer):
    """An HTTPS server for model URLs: /NAME serves examples/models/NAME; /cut/NAME announces the
    whole file but closes the connection halfway through it."""

    def __init__(self, pki):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                cut = self.path.startswith("/cut/")
                path = MODELS / self.path.removeprefix("/cut/").lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if cut else data)
                if cut:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert, key = pki.server
        context.load_cert_chain(cert, key)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def https(tmp_path_factory):
    pki = Pki(tmp_path_factory.mktemp("pki"))
    server = Files(pki)
    server.ca = pki.ca
    yield server
    server.shutdown()


def manifest(tmp_path, models, sources="", server=""):
    """A manifest with its own cache under tmp_path."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "oxinfer.toml"
    path.write_text(f'[server]\nmodel_cache = "cache"\n{server}\n[sources]\nretries = 1\n{sources}\n{models}')
    return path


# --- MLflow -------------------------------------------------------------------------------------


def test_every_models_uri_form_with_provenance_from_the_registry(registry, tmp_path):
    version, run_id = registry.log_onnx("fraud", MODELS / "mlp.onnx")
    registry.client.set_registered_model_alias("fraud", "champion", version)
    registry.client.set_model_version_tag("fraud", version, "validation", "passed")
    registry.client.set_registered_model_tag("fraud", "team", "risk")
    registry.client.update_model_version("fraud", version, description="first candidate")
    served_bytes = registry.artifact("fraud", version, "model.onnx")
    models = "".join(
        f'[[models]]\nname = "{name}"\nruntime = "tract"\npath = "{uri}"\n'
        for name, uri in [("by-alias", "models:/fraud@champion"), ("by-number", f"models:/fraud/{version}"),
                          ("latest", "models:/fraud/latest")]
    )
    path = manifest(tmp_path, models, f'[sources.mlflow]\ntracking_uri = "{registry.url}"',
                    '[inference_log]\npath = "inference.jsonl"\n')
    s = Server(path)
    try:
        mv = registry.client.get_model_version("fraud", version)
        for name in ["by-alias", "by-number", "latest"]:
            p = parameters(s, name)
            assert p["sha256"] == hashlib.sha256(served_bytes).hexdigest()
            assert p["provenance.registry_version"] == version
            assert p["provenance.run_id"] == run_id == mv.run_id
            assert p["provenance.description"] == "first candidate"
            assert p["provenance.tags.validation"] == "passed"
            assert p["provenance.tags.team"] == "risk"
            assert p["provenance.artifact_location"] == registry.client.get_model_version_download_uri("fraud", version)
            assert p["provenance.created"].startswith(time.strftime("%Y-%m-%dT", time.gmtime(mv.creation_timestamp / 1000)))
            assert "provenance.downloaded" in p
        assert parameters(s, "by-alias")["provenance.source"] == "models:/fraud@champion"
        assert parameters(s, "latest")["provenance.source"] == "models:/fraud/latest"
        config = requests.get(f"{s.url}/v2/models/by-alias/config", timeout=10).json()
        assert config["parameters"]["provenance.registry_version"]["string_value"] == version
        body = infer(s, "by-alias")
        assert body["parameters"]["model_sha256"] == hashlib.sha256(served_bytes).hexdigest()
        log = tmp_path / "inference.jsonl"
        record = json.loads(wait_for(lambda: [line for line in (log.read_text() if log.exists() else "").splitlines()
                                              if '"by-alias"' in line], what="a log record")[0])
        assert record["model"]["source"] == "models:/fraud@champion"
        assert record["model"]["registry_version"] == version
    finally:
        s.stop()
    # The three entries name one version: its files were downloaded and stored once.
    trees = list((tmp_path / "cache" / "trees" / "sha256").iterdir())
    assert len(trees) == 1 and (trees[0] / "MLmodel").is_file()


def test_an_alias_moved_then_load_serves_the_new_version(registry, tmp_path):
    v1, _ = registry.log_onnx("ranker", MODELS / "mlp.onnx")
    v2, _ = registry.log_onnx("ranker", MODELS / "mlp_v2.onnx")
    registry.client.set_registered_model_alias("ranker", "prod", v1)
    path = manifest(tmp_path, '[[models]]\nname = "ranker"\nruntime = "tract"\npath = "models:/ranker@prod"\n',
                    f'[sources.mlflow]\ntracking_uri = "{registry.url}"')
    s = Server(path)
    try:
        before = parameters(s, "ranker")
        assert before["provenance.registry_version"] == v1
        first = infer(s, "ranker")["outputs"][0]["data"]
        registry.client.set_registered_model_alias("ranker", "prod", v2)
        r = requests.post(f"{s.url}/v2/repository/models/ranker/load", json={}, timeout=60)
        assert r.status_code == 200, r.text
        after = parameters(s, "ranker")
        assert after["provenance.registry_version"] == v2
        assert after["sha256"] == hashlib.sha256(registry.artifact("ranker", v2, "model.onnx")).hexdigest() != before["sha256"]
        assert infer(s, "ranker")["outputs"][0]["data"] != first
        # SIGHUP re-resolves too: the alias moved back, the manifest unchanged.
        registry.client.set_registered_model_alias("ranker", "prod", v1)
        s.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: parameters(s, "ranker")["provenance.registry_version"] == v1, timeout=60, what="the swap back")
    finally:
        s.stop()


def test_a_version_that_is_not_ready_is_refused(registry, tmp_path):
    version, _ = registry.log_onnx("pending", MODELS / "mlp.onnx")
    with sqlite3.connect(registry.root / "mlflow.db") as db:
        db.execute("UPDATE model_versions SET status = 'PENDING_REGISTRATION' WHERE name = 'pending'")
    path = manifest(tmp_path, f'[[models]]\nname = "p"\nruntime = "tract"\npath = "models:/pending/{version}"\n',
                    f'[sources.mlflow]\ntracking_uri = "{registry.url}"')
    result = run_oxinfer("check", "--manifest", str(path))
    assert result.returncode != 0
    assert f"version {version} of 'pending' is PENDING_REGISTRATION, not READY" in result.stderr
    result = run_oxinfer("check", "--manifest", str(manifest(tmp_path, '[[models]]\nname = "p"\nruntime = "tract"\n'
                                                                     'path = "models:/nothing/1"\n',
                                                                     f'[sources.mlflow]\ntracking_uri = "{registry.url}"')))
    assert result.returncode != 0 and "404" in result.stderr and "models:/nothing/1" in result.stderr


def test_a_python_function_model_is_refused_with_the_reason(registry, tmp_path):
    model = tmp_path / "pyfunc"
    model.mkdir()
    (model / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n"
                                   "    python_version: 3.11.7\n")
    (model / "model.pkl").write_bytes(b"\x80\x04N.")
    version = registry.log_directory("pyfunc-model", model)
    path = manifest(tmp_path, f'[[models]]\nname = "p"\nruntime = "onnxruntime"\npath = "models:/pyfunc-model/{version}"\n',
                    f'[sources.mlflow]\ntracking_uri = "{registry.url}"')
    result = run_oxinfer("check", "--manifest", str(path))
    assert result.returncode != 0
    assert "only the python_function flavor (loaded by mlflow.sklearn)" in result.stderr, result.stderr


def test_a_sentence_transformers_directory_is_served_by_candle(registry, tmp_path):
    minilm = pathlib.Path(os.environ["OXINFER_MINILM_DIR"])
    model = tmp_path / "st"
    shutil.copytree(minilm, model / "model.sentence_transformer")
    (model / "MLmodel").write_text("flavors:\n  sentence_transformers:\n    data: model.sentence_transformer\n"
                                   "  python_function:\n    loader_module: mlflow.sentence_transformers\n")
    version = registry.log_directory("minilm", model)
    path = manifest(tmp_path, '[[models]]\nname = "minilm"\nruntime = "candle"\npath = "models:/minilm/latest"\n',
                    f'[sources.mlflow]\ntracking_uri = "{registry.url}"')
    s = Server(path)
    try:
        assert parameters(s, "minilm")["provenance.registry_version"] == version
        r = requests.post(f"{s.url}/v1/embeddings", json={"model": "minilm", "input": "a cache that survives outages"},
                          timeout=60)
        assert r.status_code == 200, r.text
        assert len(r.json()["data"][0]["embedding"]) == 384
    finally:
        s.stop()


def test_registry_down_is_served_from_the_cache_and_offline_never_calls_it(registry, tmp_path):
    version, _ = registry.log_onnx("outage", MODELS / "mlp.onnx")
    registry.client.set_registered_model_alias("outage", "live", version)
    forwarder = Relay(f"127.0.0.1:{registry.port}")
    path = manifest(tmp_path, '[[models]]\nname = "o"\nruntime = "tract"\npath = "models:/outage@live"\n',
                    f'[sources.mlflow]\ntracking_uri = "http://127.0.0.1:{forwarder.port}"')
    result = run_oxinfer("check", "--manifest", str(path))
    assert result.returncode == 0, result.stderr
    assert f"source models:/outage@live: registry version {version}" in result.stdout
    forwarder.close()
    # The registry is unreachable now: the last resolution is served, with a warning.
    s = Server(path)
    try:
        p = parameters(s, "o")
        assert p["provenance.registry_version"] == version
        infer(s, "o")
        assert any("unreachable" in line and "from the model cache" in line for line in s.log), "".join(s.log)
    finally:
        s.stop()
    # --offline: no connection is even tried (the registry answers again, on a port no one
    # would reach anyway), and an empty cache fails clearly.
    result = run_oxinfer("check", "--manifest", str(path), "--offline")
    assert result.returncode == 0 and "not contacted: --offline" in result.stdout, result.stderr
    empty = manifest(tmp_path / "empty", '[[models]]\nname = "o"\nruntime = "tract"\npath = "models:/outage@live"\n',
                     f'[sources.mlflow]\ntracking_uri = "{registry.url}"')
    result = run_oxinfer("serve", "--manifest", str(empty), "--offline", "--http", "127.0.0.1:0")
    assert result.returncode != 0
    assert "models:/outage@live: offline" in result.stderr and "holds nothing for it" in result.stderr, result.stderr
    result = run_oxinfer("check", "--manifest", str(empty), "--offline")
    assert result.returncode == 0 and "skipped (--offline" in result.stdout, result.stdout + result.stderr
    assert not blobs(tmp_path / "empty" / "cache")


def test_the_manifest_provenance_wins_over_the_registry(registry, tmp_path):
    version, _ = registry.log_onnx("merged", MODELS / "mlp.onnx")
    registry.client.update_model_version("merged", version, description="from the registry")
    path = manifest(tmp_path, f'[[models]]\nname = "m"\nruntime = "tract"\npath = "models:/merged/{version}"\n'
                              '[models.provenance]\ndescription = "from the manifest"\nmodel_card = "https://example.invalid/card"\n',
                    f'[sources.mlflow]\ntracking_uri = "{registry.url}"')
    s = Server(path)
    try:
        p = parameters(s, "m")
        assert p["provenance.description"] == "from the manifest"
        assert p["provenance.model_card"] == "https://example.invalid/card"
        assert p["provenance.registry_version"] == version
        assert any("provenance.description" in line and "from the registry" in line for line in s.log)
    finally:
        s.stop()


def test_the_tracking_uri_and_credentials_come_from_the_environment(registry, tmp_path):
    version, _ = registry.log_onnx("env", MODELS / "mlp.onnx")
    path = manifest(tmp_path, f'[[models]]\nname = "e"\nruntime = "tract"\npath = "models:/env/{version}"\n')
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.url, "MLFLOW_TRACKING_TOKEN": "t0ken"}
    result = run_oxinfer("check", "--manifest", str(path), env=env)
    assert result.returncode == 0, result.stderr
    result = run_oxinfer("check", "--manifest", str(path), env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    assert result.returncode != 0 and "MLFLOW_TRACKING_URI" in result.stderr


# --- S3 -----------------------------------------------------------------------------------------


def test_s3_objects_and_prefixes_from_the_environment_and_the_manifest(s3, tmp_path):
    s3.put("fraud/model.onnx", MODELS / "mlp.onnx")
    s3.put("ranker/v2/model.onnx", MODELS / "mlp_v2.onnx")
    s3.put("ranker/v2/README.md", MODELS / "make_models.py")
    # Zero-byte folder markers, as consoles and file system adapters leave them.
    for marker in ["ranker/v2/", "ranker/v2/docs/"]:
        s3.client.put_object(Bucket="models", Key=marker, Body=b"")
    s3.put("ranker/v2/docs/notes.txt", MODELS / "make_models.py")
    models = ('[[models]]\nname = "object"\nruntime = "tract"\npath = "s3://models/fraud/model.onnx"\n'
              '[[models]]\nname = "prefix"\nruntime = "tract"\npath = "s3://models/ranker/v2/"\n')
    env = {**os.environ, **s3.env, "AWS_ENDPOINT_URL": s3.endpoint, "AWS_ALLOW_HTTP": "true"}
    s = Server(manifest(tmp_path, models), env=env)
    try:
        p = parameters(s, "object")
        assert p["sha256"] == sha256(MODELS / "mlp.onnx")
        assert p["provenance.source"] == "s3://models/fraud/model.onnx"
        assert s3.endpoint in p["provenance.artifact_location"]
        assert parameters(s, "prefix")["sha256"] == sha256(MODELS / "mlp_v2.onnx")
        infer(s, "object")
        infer(s, "prefix")
    finally:
        s.stop()
    assert blobs(tmp_path / "cache") == [sha256(MODELS / "mlp.onnx")]
    # The same store from [sources.s3] alone; plain HTTP must be allowed there.
    env = {**os.environ, **s3.env}
    for key in ("AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP"):
        env.pop(key, None)
    refused = manifest(tmp_path / "m2", models, f'[sources.s3]\nendpoint = "{s3.endpoint}"')
    result = run_oxinfer("check", "--manifest", str(refused), env=env)
    assert result.returncode != 0 and "allow_http = true" in result.stderr, result.stderr
    allowed = manifest(tmp_path / "m2", models, f'[sources.s3]\nendpoint = "{s3.endpoint}"\nallow_http = true')
    result = run_oxinfer("check", "--manifest", str(allowed), env=env)
    assert result.returncode == 0, result.stderr
    # A missing object names the source.
    missing = manifest(tmp_path / "m2", '[[models]]\nname = "x"\nruntime = "tract"\npath = "s3://models/none.onnx"\n',
                       f'[sources.s3]\nendpoint = "{s3.endpoint}"\nallow_http = true')
    result = run_oxinfer("check", "--manifest", str(missing), env=env)
    assert result.returncode != 0 and "s3://models/none.onnx" in result.stderr, result.stderr


def test_registry_artifacts_in_s3_are_downloaded_from_the_store(s3, tmp_path, monkeypatch):
    """The common production set-up: the tracking server does not proxy artifacts, the version's
    artifact location is s3://..., and oxinfer downloads the directory from the store itself."""
    s3.client.create_bucket(Bucket="mlflow")
    env = {**s3.env, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "registry").mkdir()
    registry = Registry(tmp_path / "registry", ["--default-artifact-root", "s3://mlflow/", "--no-serve-artifacts"],
                        env={**os.environ, **env})
    try:
        version, _ = registry.log_onnx("in-s3", MODELS / "mlp.onnx")
        location = registry.client.get_model_version_download_uri("in-s3", version)
        assert location.startswith("s3://mlflow/"), location
        path = manifest(tmp_path, f'[[models]]\nname = "m"\nruntime = "tract"\npath = "models:/in-s3/{version}"\n',
                        f'[sources.mlflow]\ntracking_uri = "{registry.url}"\n'
                        f'[sources.s3]\nendpoint = "{s3.endpoint}"\nallow_http = true\n')
        s = Server(path, env={**os.environ, **s3.env})
        try:
            p = parameters(s, "m")
            assert p["provenance.artifact_location"] == location
            assert p["sha256"] == hashlib.sha256(
                s3.client.get_object(Bucket="mlflow", Key=location.removeprefix("s3://mlflow/") + "/model.onnx")["Body"].read()
            ).hexdigest()
            infer(s, "m")
        finally:
            s.stop()
    finally:
        registry.stop()


# --- HTTPS --------------------------------------------------------------------------------------


def test_an_https_file_with_a_pinned_digest_is_stored_once_and_checked(https, s3, tmp_path):
    digest = sha256(MODELS / "mlp.onnx")
    sources = f'ca_file = "{https.ca}"\n'
    good = manifest(tmp_path, f'[[models]]\nname = "u"\nruntime = "tract"\npath = "{https.url}/mlp.onnx"\nsha256 = "{digest}"\n',
                    sources)
    s = Server(good)
    try:
        p = parameters(s, "u")
        assert p["sha256"] == digest and p["provenance.source"] == f"{https.url}/mlp.onnx"
        infer(s, "u")
    finally:
        s.stop()
    # The same content from S3 is not stored again.
    s3.put("again/mlp.onnx", MODELS / "mlp.onnx")
    both = manifest(tmp_path, f'[[models]]\nname = "s"\nruntime = "tract"\npath = "s3://models/again/mlp.onnx"\n',
                    sources + f'[sources.s3]\nendpoint = "{s3.endpoint}"\nallow_http = true\n')
    result = run_oxinfer("check", "--manifest", str(both), env={**os.environ, **s3.env})
    assert result.returncode == 0, result.stderr
    assert blobs(tmp_path / "cache") == [digest]
    # Content named by a pinned digest that the cache holds is not fetched again; with a cache
    # that does not hold it, a URL serving other bytes is refused and nothing is stored.
    wrong = f'[[models]]\nname = "u"\nruntime = "tract"\npath = "{https.url}/mlp_v2.onnx"\nsha256 = "{digest}"\n'
    assert run_oxinfer("check", "--manifest", str(manifest(tmp_path, wrong, sources))).returncode == 0
    result = run_oxinfer("check", "--manifest", str(manifest(tmp_path / "fresh", wrong, sources)))
    assert result.returncode != 0 and "sha256 mismatch" in result.stderr, result.stderr
    assert sha256(MODELS / "mlp_v2.onnx") in result.stderr
    assert blobs(tmp_path / "fresh" / "cache") == [] and not leftovers(tmp_path / "fresh" / "cache")
    # Cut halfway: refused after the retries, and nothing that looks whole is left.
    v2 = sha256(MODELS / "mlp_v2.onnx")
    cut = manifest(tmp_path, f'[[models]]\nname = "u"\nruntime = "tract"\npath = "{https.url}/cut/mlp_v2.onnx"\n'
                             f'sha256 = "{v2}"\n', sources)
    result = run_oxinfer("check", "--manifest", str(cut))
    assert result.returncode != 0, result.stderr
    assert "cut off" in result.stderr or "bytes arrived" in result.stderr, result.stderr
    assert blobs(tmp_path / "cache") == [digest] and not leftovers(tmp_path / "cache")
    # Without the test CA the server is not trusted.
    untrusted = manifest(tmp_path / "u2", f'[[models]]\nname = "u"\nruntime = "tract"\npath = "{https.url}/mlp_v2.onnx"\n'
                                          f'sha256 = "{v2}"\n')
    result = run_oxinfer("check", "--manifest", str(untrusted))
    assert result.returncode != 0 and "certificate" in result.stderr.lower(), result.stderr


def test_url_sources_need_a_pin_and_https(tmp_path):
    result = run_oxinfer("check", "--manifest", str(manifest(
        tmp_path, '[[models]]\nname = "u"\nruntime = "tract"\npath = "https://example.invalid/m.onnx"\n')))
    assert result.returncode != 0 and "needs a pinned sha256" in result.stderr
    result = run_oxinfer("check", "--manifest", str(manifest(
        tmp_path, f'[[models]]\nname = "u"\nruntime = "tract"\npath = "http://example.invalid/m.onnx"\nsha256 = "{"0" * 64}"\n')))
    assert result.returncode != 0 and "allow_http = true" in result.stderr
    result = run_oxinfer("check", "--manifest", str(manifest(
        tmp_path, '[[models]]\nname = "u"\nruntime = "tract"\npath = "gs://bucket/m.onnx"\n')))
    assert result.returncode != 0 and "not a model source" in result.stderr
