"""Hostile input and hostile conditions, through the real binary: what a request that looks valid
can make the server do is bounded, and the server keeps serving afterwards.

Each test checks the status, and where memory is the point the process's high-water mark
(VmHWM), and that the server still answers a normal request.
"""

import gzip
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import MODELS, ROOT, Server, h2_frame as frame, run_oxinfer


def request(server, path, body=None, headers=None, method=None):
    """(status, headers, body bytes) of one HTTP request."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    headers = dict(headers or {})
    if data is not None:
        # urllib would send a form's type otherwise.
        headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(server.url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, Headers(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, Headers(e.headers), e.read()


class Headers(dict):
    """Response headers, looked up without regard to case."""

    def __init__(self, headers):
        super().__init__((k.lower(), v) for k, v in headers.items())

    def __getitem__(self, key):
        return super().__getitem__(key.lower())

    def get(self, key, default=None):
        return super().get(key.lower(), default)


def error(server, path, body=None, headers=None, method=None):
    status, hdrs, raw = request(server, path, body, headers, method)
    assert hdrs.get("Content-Type") == "application/json", (status, raw[:200])
    return status, json.loads(raw)["error"]


def vm_hwm_kb(server):
    for line in open(f"/proc/{server.proc.pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


SIMPLE = {
    "inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16},
    ]
}


def still_serves(server):
    status, _, raw = request(server, "/v2/models/simple/infer", SIMPLE)
    assert status == 200, raw[:300]
    assert json.loads(raw)["outputs"][0]["data"][:3] == [1, 2, 3]


def write_manifest(tmp_path, extra="", models=("simple", "image")):
    parts = [extra]
    for name in models:
        parts.append(f'[[models]]\nname = "{name}"\nruntime = "tract"\npath = "{MODELS / (name + ".onnx")}"\n')
    manifest = tmp_path / "m.toml"
    manifest.write_text("\n".join(parts))
    return manifest


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    log = tmp / "audit" / "inference.jsonl"
    extra = f'[inference_log]\npath = "{log}"\nmax_record_bytes = 4096\n'
    s = Server(write_manifest(tmp, extra))
    s.log_path = log
    yield s
    s.stop()
    assert s.proc.returncode == 0, "".join(s.log)


def test_zero_sized_dimensions_cannot_ask_for_a_huge_batch(srv):
    before = vm_hwm_kb(srv)
    for shape, limit in (
        ([1048576, 3, 0, 0], "max_empty_extent"),
        ([1 << 40, 3, 0, 0], "max_rows"),
        ([1, 3, 0, 1 << 30], "max_dimension"),
        ([1, 3, 0, 100000], "max_empty_extent"),
    ):
        body = {"inputs": [{"name": "image", "shape": shape, "datatype": "FP32", "data": []}]}
        status, message = error(srv, "/v2/models/image/infer", body)
        assert status == 400 and limit in message, (shape, message)
    # The same through gRPC.
    client = grpcclient.InferenceServerClient(url=srv.grpc_address)
    image = grpcclient.InferInput("image", [1048576, 3, 0, 0], "FP32")
    image.set_data_from_numpy(np.zeros((1048576, 3, 0, 0), dtype=np.float32))
    with pytest.raises(Exception, match="max_empty_extent"):
        client.infer("image", [image])
    assert vm_hwm_kb(srv) - before < 50_000, "no allocation sized by the request's dimensions"
    still_serves(srv)


def test_outputs_over_the_limit_are_refused_before_execution(tmp_path):
    extra = ""
    manifest = write_manifest(tmp_path, extra)
    text = manifest.read_text() + "[models.limits]\nmax_output_bytes = 1000\n"
    manifest.write_text(text)  # applies to the last model: image
    server = Server(manifest)
    try:
        body = {"inputs": [{"name": "image", "shape": [100, 3, 0, 0], "datatype": "FP32", "data": []}]}
        status, message = error(server, "/v2/models/image/infer", body)
        assert status == 413 and "max_output_bytes" in message, message
        small = {"inputs": [{"name": "image", "shape": [1, 3, 1, 1], "datatype": "FP32", "data": [1, 2, 3]}]}
        assert request(server, "/v2/models/image/infer", small)[0] == 200
    finally:
        server.stop()


def test_request_ids_are_bounded_and_printable(srv):
    long_id = "x" * 600_000
    status, hdrs, raw = request(srv, "/v2/models/simple/infer", dict(SIMPLE, id=long_id))
    assert status == 400 and "at most 128" in json.loads(raw)["error"]
    assert len(hdrs["X-Request-ID"]) <= 128, "a long id is never echoed"
    status, hdrs, raw = request(srv, "/v2/models/simple/infer", SIMPLE, headers={"X-Request-ID": "y" * 129})
    assert status == 400 and hdrs["X-Request-ID"] != "y" * 129
    status, hdrs, _ = request(srv, "/v2/models/simple/infer", dict(SIMPLE, id="a" * 128))
    assert status == 200 and hdrs["X-Request-ID"] == "a" * 128
    status, message = error(srv, "/v2/models/simple/infer", dict(SIMPLE, id="bad\u0001id"))
    assert status == 400 and "printable" in message
    still_serves(srv)


def test_log_records_are_bounded_and_the_chain_verifies(srv):
    # Thousands of tensors (one input given 2000 times: an error, but logged) and a long model
    # name: the records stay small.
    inputs = [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [i] * 16} for i in range(2000)]
    status, _ = error(srv, "/v2/models/simple/infer", {"id": "many-inputs", "inputs": inputs})
    assert status == 400
    status, _ = error(srv, "/v2/models/" + "m" * 5000 + "/infer", SIMPLE)
    assert status == 404
    still_serves(srv)
    deadline = time.time() + 10
    while time.time() < deadline:
        lines = srv.log_path.read_text().splitlines()
        if any('"many-inputs"' in l for l in lines) and any("m" * 1000 in l for l in lines):
            break
        time.sleep(0.1)
    assert max(len(l) for l in lines) <= 4096 + 200, "records are cut to max_record_bytes"
    record = json.loads(next(l for l in lines if '"many-inputs"' in l))
    assert record["omitted_tensors"] == 2000 and record["inputs"] == []
    result = run_oxinfer("audit", "verify", str(srv.log_path))
    assert result.returncode == 0, result.stderr
    assert "starts with the log's first record" in result.stdout


def test_audit_verify_says_when_the_oldest_records_are_missing(tmp_path):
    log = tmp_path / "audit" / "inference.jsonl"
    extra = f'[inference_log]\npath = "{log}"\nmax_file_bytes = 1000\nretention_files = 1\n'
    server = Server(write_manifest(tmp_path, extra, models=("simple",)))
    for i in range(6):
        assert request(server, "/v2/models/simple/infer", dict(SIMPLE, id=f"r{i}"))[0] == 200
    server.stop()
    rotated = sorted(log.parent.glob("inference.jsonl.*"))
    result = run_oxinfer("audit", "verify", *map(str, rotated), str(log))
    assert result.returncode == 0, result.stderr
    assert "deleted by retention" in result.stdout, result.stdout


def test_web_pages_cannot_drive_the_server(srv):
    # A page's form post: text/plain, cross-origin.
    status, message = error(
        srv,
        "/v2/repository/models/simple/unload",
        b"{}",
        headers={"Content-Type": "text/plain", "Origin": "https://evil.example"},
    )
    assert status == 415, message
    status, message = error(srv, "/v2/repository/models/simple/unload", b"{}", headers={"Origin": "https://evil.example"})
    assert status == 403 and "cors_origins" in message
    status, message = error(
        srv, "/v2/models/simple/infer", SIMPLE, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 415 and "application/json" in message
    assert request(srv, "/v2/models/simple/ready")[0] == 200, "nothing was unloaded"
    still_serves(srv)


def test_allowed_origins_get_cors_headers(tmp_path):
    server = Server(write_manifest(tmp_path, '[server]\ncors_origins = ["https://app.example"]\n', ("simple",)))
    try:
        status, hdrs, _ = request(server, "/v2/models/simple/infer", SIMPLE, headers={"Origin": "https://app.example", "Content-Type": "application/json"})
        assert status == 200 and hdrs["Access-Control-Allow-Origin"] == "https://app.example"
        status, hdrs, _ = request(
            server,
            "/v2/models/simple/infer",
            method="OPTIONS",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert status == 204 and "POST" in hdrs["Access-Control-Allow-Methods"]
        assert error(server, "/v2/models/simple/infer", SIMPLE, headers={"Origin": "https://other.example"})[0] == 403
    finally:
        server.stop()


def test_concurrent_loads_of_one_model_run_once(srv):
    before = sum(1 for l in srv.log if "model loaded through the repository API" in l)
    results = []

    def load():
        results.append(request(srv, "/v2/repository/models/image/load", b"", method="POST")[0])

    threads = [threading.Thread(target=load) for _ in range(48)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 48
    time.sleep(0.2)
    loads = sum(1 for l in srv.log if "model loaded through the repository API" in l) - before
    assert 1 <= loads < 48, f"{loads} loads ran for 48 concurrent requests"
    still_serves(srv)


def test_client_errors_do_not_show_server_paths(tmp_path):
    model = tmp_path / "models" / "simple.onnx"
    model.parent.mkdir()
    shutil.copy(MODELS / "simple.onnx", model)
    manifest = tmp_path / "m.toml"
    manifest.write_text(f'[[models]]\nname = "simple"\nruntime = "tract"\npath = "{model}"\n')
    server = Server(manifest)
    try:
        model.write_bytes(b"corrupted")
        status, message = error(server, "/v2/repository/models/simple/load", b"", method="POST")
        assert status == 500 and "simple.onnx" in message and str(tmp_path) not in message, message
        status, message = error(server, "/v2/repository/models/nope/load", b"", method="POST")
        assert status == 404 and "m.toml" in message and str(tmp_path) not in message, message
        index = json.loads(request(server, "/v2/repository/index", b"", method="POST")[2])
        assert all(str(tmp_path) not in e["reason"] for e in index)
        assert any(str(tmp_path) in l for l in server.log), "the server log keeps the full path"
    finally:
        server.stop()


def test_big_json_bodies_do_not_stall_liveness(srv):
    body = json.dumps(
        {"inputs": [{"name": "image", "shape": [1, 3, 700, 700], "datatype": "FP32", "data": [0.5] * (3 * 700 * 700)}]}
    ).encode()
    done = []

    def big():
        done.append(request(srv, "/v2/models/image/infer", body)[0])

    threads = [threading.Thread(target=big) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    worst = 0.0
    while any(t.is_alive() for t in threads):
        started = time.monotonic()
        assert request(srv, "/v2/health/live")[0] == 200
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert done == [200] * 4
    assert worst < 0.5, f"liveness took {worst:.3f} s while big bodies were decoded"


def test_shutdown_closes_lingering_connections(tmp_path):
    log = tmp_path / "audit" / "inference.jsonl"
    extra = f'[server]\nshutdown_timeout_seconds = 1\n[inference_log]\npath = "{log}"\n'
    server = Server(write_manifest(tmp_path, extra, ("simple",)))
    assert request(server, "/v2/models/simple/infer", dict(SIMPLE, id="before-shutdown"))[0] == 200
    host, port = server.address.rsplit(":", 1)
    half = socket.create_connection((host, int(port)))
    half.sendall(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
    h2 = socket.create_connection((host, int(port)))
    h2.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    time.sleep(0.3)
    started = time.monotonic()
    server.proc.terminate()
    server.proc.wait(timeout=15)
    elapsed = time.monotonic() - started
    half.close()
    h2.close()
    assert server.proc.returncode == 0, "".join(server.log)
    assert elapsed < 5, f"exit took {elapsed:.1f} s with clients still connected"
    assert "before-shutdown" in log.read_text()
    assert run_oxinfer("audit", "verify", str(log)).returncode == 0


def reset_storm(address, streams=2000):
    """Opens `streams` HTTP/2 streams with malformed requests (no :method), each of which the
    server must reset, as fast as the connection takes them: the RST_STREAM frames the server
    sent, and its GOAWAY as (last stream, error code, debug data), or None."""
    host, port = address.rsplit(":", 1)
    path = b"/grpc.health.v1.Health/Check"
    # HPACK: :scheme http (static 6), :path and :authority literal; no :method.
    block = b"\x86" + b"\x04" + bytes([len(path)]) + path + b"\x01\x01x"

    with socket.create_connection((host, int(port)), timeout=10) as s:
        frames = [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(0x4, 0, 0)]
        frames += [frame(0x1, 0x5, 1 + 2 * i, block) for i in range(streams)]  # END_STREAM | END_HEADERS
        try:
            s.sendall(b"".join(frames))
        except OSError:
            pass  # sent away before it all went out
        data, resets, goaway = b"", 0, None
        s.settimeout(5)
        while True:
            try:
                chunk = s.recv(1 << 20)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            data += chunk
        while len(data) >= 9 and len(data) >= 9 + int.from_bytes(data[:3], "big"):
            length, kind = int.from_bytes(data[:3], "big"), data[3]
            payload, data = data[9 : 9 + length], data[9 + length :]
            if kind == 0x3:
                resets += 1
            elif kind == 0x7:
                goaway = (int.from_bytes(payload[:4], "big") & 0x7FFFFFFF, int.from_bytes(payload[4:8], "big"), payload[8:])
        return resets, goaway


def test_a_client_that_makes_the_server_reset_its_streams_is_sent_away(srv):
    # Resets the server makes are bounded on both ports (h2's limit of local error resets,
    # which tonic's server turned off: 2,000 such streams were reset one by one on the gRPC
    # port before it was served by hyper directly).
    for address in (srv.address, srv.grpc_address):
        resets, goaway = reset_storm(address)
        assert goaway is not None, f"{address}: {resets} streams reset, no GOAWAY"
        assert goaway[1] == 0xB and goaway[2] == b"too_many_internal_resets", goaway  # ENHANCE_YOUR_CALM
        assert resets < 2000, resets
    still_serves(srv)
    client = grpcclient.InferenceServerClient(url=srv.grpc_address)
    assert client.is_server_live()


def tmpfs(path, size="256k"):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


def umount(path):
    subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("on_error", ["serve", "refuse"])
def test_a_full_disk_keeps_the_log_whole(tmp_path, on_error):
    disk = tmp_path / "disk"
    tmpfs(disk)
    try:
        log = disk / "inference.jsonl"
        extra = f'[inference_log]\npath = "{log}"\non_error = "{on_error}"\nmax_file_bytes = 100000000\n'
        server = Server(write_manifest(tmp_path, extra, ("simple",)))
        try:
            filler = disk / "filler"
            # Fill the disk but for a few records.
            free = shutil.disk_usage(disk).free
            filler.write_bytes(b"\0" * max(0, free - 6000))
            statuses = []
            for i in range(40):
                statuses.append(request(server, "/v2/models/simple/infer", dict(SIMPLE, id=f"full-{i}"))[0])
                time.sleep(0.02)
            time.sleep(0.5)
            if on_error == "refuse":
                assert 503 in statuses, statuses
                status, message = error(server, "/v2/models/simple/infer", SIMPLE)
                assert status == 503 and "inference log" in message
            else:
                assert statuses == [200] * 40
            metrics = request(server, "/metrics")[2].decode()
            errors = [l for l in metrics.splitlines() if l.startswith("oxinfer_inference_log_write_errors_total")]
            assert errors and float(errors[0].split()[-1]) >= 1, errors
            # The file holds whole records only, and verifies.
            assert log.read_bytes().endswith(b"\n")
            assert run_oxinfer("audit", "verify", str(log)).returncode == 0
            # Room again: the held records are written, in order, and serving resumes.
            filler.unlink()
            deadline = time.time() + 10
            while time.time() < deadline and request(server, "/v2/models/simple/infer", SIMPLE)[0] != 200:
                time.sleep(0.2)
            still_serves(server)
            time.sleep(1)
        finally:
            server.stop()
        assert server.proc.returncode == 0
        result = run_oxinfer("audit", "verify", str(log))
        assert result.returncode == 0, result.stderr
        records = [json.loads(l) for l in log.read_text().splitlines()]
        full = [r for r in records if r["request_id"].startswith("full-")]
        # Every request, served or refused, is recorded once, in order, with its outcome.
        assert [r["request_id"] for r in full] == [f"full-{i}" for i in range(40)]
        served = [f"full-{i}" for i, s in enumerate(statuses) if s == 200]
        assert [r["request_id"] for r in full if r["status"] == "ok"] == served
    finally:
        umount(disk)


def test_bodies_are_not_decoded_for_unknown_models_or_refused_inputs(srv):
    """~15 MB of empty strings in 50 KB of gzip: decoded, each would cost a 32-byte handle."""
    before = vm_hwm_kb(srv)
    n = 5_000_000
    for model, status in (("nope", 404), ("simple", 400)):
        body = '{"inputs":[{"name":"INPUT0","shape":[%d],"datatype":"BYTES","data":[""%s]}]}' % (n, ',""' * (n - 1))
        packed = gzip.compress(body.encode())
        assert len(packed) < 100_000
        got, message = error(srv, f"/v2/models/{model}/infer", packed, headers={"Content-Encoding": "gzip"})
        assert got == status, message
    grown = vm_hwm_kb(srv) - before
    assert grown < 80_000, f"the process grew by {grown} kB"
    still_serves(srv)


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory):
    """A server whose requests in flight may hold 32 MiB together (bodies up to 8 MiB)."""
    tmp = tmp_path_factory.mktemp("budget")
    log = tmp / "inference.jsonl"
    extra = (
        "[server]\nmax_request_bytes = 8388608\nmax_inflight_bytes = 33554432\n"
        f'[inference_log]\npath = "{log}"\n'
    )
    s = Server(write_manifest(tmp, extra, models=("simple", "dtypes", "identity")))
    s.log_path = log
    yield s
    s.stop()
    assert s.proc.returncode == 0, "".join(s.log)


def metric(server, name):
    status, _, raw = request(server, "/metrics")
    assert status == 200
    for line in raw.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def empty_strings_request(n_rows):
    """2 x n_rows empty BYTES elements for the dtypes model: 3 bytes each in JSON, 32 in memory."""
    n = 2 * n_rows
    body = '{"inputs":[{"name":"in_BYTES","shape":[%d,2],"datatype":"BYTES","data":[""%s]}]}' % (n_rows, ',""' * (n - 1))
    return gzip.compress(body.encode())


def test_a_request_over_the_inflight_budget_is_refused_before_decoding(budgeted):
    """REST: 2M empty strings would decode to 64 MB of element handles, over the 32 MiB budget:
    503 with the reason, before the data is decoded; smaller requests are served, and the
    budget is whole again once requests and their log records are done."""
    before = vm_hwm_kb(budgeted)
    refused = metric(budgeted, "oxinfer_inflight_refused_total")
    got, message = error(budgeted, "/v2/models/dtypes/infer", empty_strings_request(1_000_000), headers={"Content-Encoding": "gzip"})
    assert got == 503, message
    assert "max_inflight_bytes" in message, message
    grown = vm_hwm_kb(budgeted) - before
    assert grown < 40_000, f"the process grew by {grown} kB"
    assert metric(budgeted, "oxinfer_inflight_refused_total") == refused + 1
    assert metric(budgeted, "oxinfer_inflight_bytes_limit") == 33554432
    # A request within the budget: 2 MB in, 2 MB out.
    x = np.arange(16 * 32768, dtype=np.float32).reshape(32768, 16)
    status, _, raw = request(budgeted, "/v2/models/identity/infer", {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]})
    assert status == 200, raw[:300]
    assert json.loads(raw)["outputs"][0]["data"][-1] == float(x.ravel()[-1])
    still_serves(budgeted)
    # Everything reserved is given back (the log records are written within a moment).
    deadline = time.time() + 10
    while metric(budgeted, "oxinfer_inflight_bytes") != 0 and time.time() < deadline:
        time.sleep(0.1)
    assert metric(budgeted, "oxinfer_inflight_bytes") == 0


def test_concurrent_requests_share_the_budget_and_give_it_back(budgeted):
    """Eight 6 MB binary requests at once against 32 MiB: each holds its body, outputs and
    response, so some are served and the rest get 503 (never a 5xx of another kind), and the
    budget returns to zero."""
    import tritonclient.http as httpclient

    x = np.ones((98304, 16), dtype=np.float32)  # 6 MiB
    results = []

    def one():
        client = httpclient.InferenceServerClient(budgeted.address, network_timeout=60)
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        try:
            r = client.infer("identity", [inp], outputs=[httpclient.InferRequestedOutput("y", binary_data=True)])
            results.append(("ok", r.as_numpy("y").shape))
        except Exception as e:  # noqa: BLE001 - the status is what is checked
            results.append(("error", str(e)))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    for kind, what in results:
        assert kind == "ok" or "max_inflight_bytes" in what, what
    assert any(kind == "ok" for kind, _ in results), results
    assert any(kind == "error" for kind, _ in results), "eight at once do not fit in 32 MiB"

    deadline = time.time() + 10
    while metric(budgeted, "oxinfer_inflight_bytes") != 0 and time.time() < deadline:
        time.sleep(0.1)
    assert metric(budgeted, "oxinfer_inflight_bytes") == 0


def test_grpc_messages_are_admitted_before_prost_decodes_them(budgeted):
    """gRPC bytes_contents: 2M empty elements are 4 MB on the wire (a few KB gzip-compressed)
    and 64 MB decoded. For an unknown model: NOT_FOUND; for a model whose input is not BYTES:
    INVALID_ARGUMENT; for a BYTES input: RESOURCE_EXHAUSTED, the budget being 32 MiB. None of
    them is decoded: the process stays small, and each is recorded in the log."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    channel = grpc.insecure_channel(budgeted.grpc_address, options=[("grpc.max_send_message_length", 64 << 20)])
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    before = vm_hwm_kb(budgeted)
    cases = (
        ("nope", "in_BYTES", grpc.StatusCode.NOT_FOUND, "unknown model"),
        ("simple", "INPUT0", grpc.StatusCode.INVALID_ARGUMENT, "datatype BYTES does not match"),
        ("dtypes", "in_BYTES", grpc.StatusCode.RESOURCE_EXHAUSTED, "max_inflight_bytes"),
    )
    for model, name, code, needle in cases:
        req = service_pb2.ModelInferRequest(model_name=model, id=f"bomb-{model}")
        tensor = req.inputs.add(name=name, datatype="BYTES", shape=[1_000_000, 2])
        tensor.contents.bytes_contents.extend([b""] * 2_000_000)
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(req, compression=grpc.Compression.Gzip, timeout=60)
        assert e.value.code() == code, e.value.details()
        assert needle in e.value.details().lower() or needle in e.value.details(), e.value.details()
    grown = vm_hwm_kb(budgeted) - before
    assert grown < 40_000, f"the process grew by {grown} kB"
    # Each refusal is an ordinary failed request in the log, under its id.
    time.sleep(0.5)
    ids = [json.loads(line).get("request_id") for line in open(budgeted.log_path)]
    for model, *_ in cases:
        assert f"bomb-{model}" in ids
    still_serves(budgeted)
    deadline = time.time() + 10
    while metric(budgeted, "oxinfer_inflight_bytes") != 0 and time.time() < deadline:
        time.sleep(0.1)
    assert metric(budgeted, "oxinfer_inflight_bytes") == 0


def test_declared_lengths_are_not_reserved_before_the_bytes_arrive(budgeted):
    """Five clients announce 8 MB bodies and send nothing: 40 MB declared against a 32 MiB
    budget. Bytes are counted as they arrive, so they hold nothing and others are served."""
    idle = []
    for _ in range(5):
        s = socket.create_connection((budgeted.address.rsplit(":", 1)[0], int(budgeted.address.rsplit(":", 1)[1])))
        s.sendall(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 8000000\r\n\r\n{")
        idle.append(s)
    try:
        time.sleep(0.3)
        still_serves(budgeted)
        assert metric(budgeted, "oxinfer_inflight_bytes") < 1_000_000
    finally:
        for s in idle:
            s.close()
