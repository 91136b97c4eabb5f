"""Transport security and the limits against slow and greedy clients, through the real binary:
TLS and mutual TLS on both ports with tritonclient (HTTP and gRPC), the kserve SDK and curl;
certificate rotation on SIGHUP while a client keeps its connection; bad certificate files at
startup; a slow-loris of 200 connections while a normal client is served; the idle timeout;
max_connections; max_concurrent_requests answered 429 / RESOURCE_EXHAUSTED at once; the HTTP/2
limits both ports announce. Certificates are made here with the openssl CLI, never committed."""

import http.client
import json
import pathlib
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import MODELS, Server, h2_frame as frame, h2_handshake, metric, run_oxinfer, wait_for

SIMPLE_INPUTS = [
    {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
    {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [3] * 16},
]


def openssl(cwd, *args):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class Pki:
    """A test CA, a server certificate for localhost, a client certificate, and a second CA
    with its own client certificate (which the server must refuse)."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ca = self.make_ca("ca", "oxinfer test CA")
        self.other_ca = self.make_ca("other-ca", "someone else's CA")
        server_ext = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        client_ext = "extendedKeyUsage=clientAuth\n"
        self.server = self.issue("ca", "server", "/CN=localhost", server_ext)
        self.server_b = self.issue("ca", "server-b", "/CN=localhost/O=rotated", server_ext)
        self.client = self.issue("ca", "client", "/CN=fraud-api/O=Example", client_ext)
        self.stranger = self.issue("other-ca", "stranger", "/CN=stranger", client_ext)

    def make_ca(self, name, cn):
        openssl(self.root, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-days", "2", "-subj", f"/CN={cn}", "-keyout", f"{name}.key", "-out", f"{name}.pem")
        return self.root / f"{name}.pem"

    def issue(self, ca, name, subject, ext):
        (self.root / f"{name}.ext").write_text(ext)
        openssl(self.root, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-subj", subject, "-keyout", f"{name}.key", "-out", f"{name}.csr")
        openssl(self.root, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
        return self.root / f"{name}.pem", self.root / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


def serve(tmp_path, server_extra="", tls="", log=True):
    manifest = tmp_path / "m.toml"
    text = f"[server]\n{server_extra}\n"
    if tls:
        text += f"[server.tls]\n{tls}\n"
    text += f'[[models]]\nname = "simple"\nruntime = "tract"\npath = "{MODELS / "simple.onnx"}"\n'
    if log:
        text += f'[inference_log]\npath = "{tmp_path / "log" / "inference.jsonl"}"\n'
    manifest.write_text(text)
    return Server(manifest)


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def records(tmp_path):
    path = tmp_path / "log" / "inference.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


BODY = json.dumps({"inputs": SIMPLE_INPUTS}).encode()


def held_request(address, headers=""):
    """A connection that sent an inference request's headers and the first 10 bytes of its
    body (BODY), and holds the rest back: a request in flight. Send `BODY[10:]` to finish it."""
    host, port = address.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"{headers}Content-Length: {len(BODY)}\r\n\r\n".encode() + BODY[:10])
    return s


def triton_http_inputs():
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
    inputs[1].set_data_from_numpy(np.full((1, 16), 3, dtype=np.int32))
    return inputs


def triton_grpc_inputs():
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
    inputs[1].set_data_from_numpy(np.full((1, 16), 3, dtype=np.int32))
    return inputs


def curl(*args):
    return subprocess.run(["curl", "-sS", "--max-time", "10", *map(str, args)], capture_output=True, text=True)


# --- TLS ---------------------------------------------------------------------------------------


def test_tls_on_both_ports_with_real_clients(tmp_path, pki):
    cert, key = pki.server
    server = serve(tmp_path, tls=f'cert = "{cert}"\nkey = "{key}"')
    try:
        http_port, grpc_port = port_of(server.address), port_of(server.grpc_address)
        url = f"https://localhost:{http_port}"
        # curl, trusting the test CA: HTTP/1.1 and HTTP/2 (ALPN).
        for version in ("--http1.1", "--http2"):
            done = curl(version, "--cacert", pki.ca, "-w", "\n%{http_code} %{http_version}",
                        "-H", "content-type: application/json",
                        "-d", json.dumps({"inputs": SIMPLE_INPUTS}), f"{url}/v2/models/simple/infer")
            body, status = done.stdout.rsplit("\n", 1)
            assert status == ("200 1.1" if version == "--http1.1" else "200 2"), done.stdout + done.stderr
            assert json.loads(body)["outputs"][0]["data"] == [i + 3 for i in range(16)]
        # Without the CA the certificate is not trusted; plaintext HTTP to the TLS port fails.
        assert curl(f"{url}/v2/health/ready").returncode != 0
        plain = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://localhost:{http_port}/v2/health/ready")
        assert plain.stdout != "200"
        # tritonclient HTTP (geventhttpclient) and gRPC (grpcio) over TLS.
        client = httpclient.InferenceServerClient(f"localhost:{http_port}", ssl=True,
                                                  ssl_options={"ca_certs": str(pki.ca)})
        result = client.infer("simple", triton_http_inputs())
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0").reshape(-1), np.arange(16) + 3)
        client.close()
        client = grpcclient.InferenceServerClient(f"localhost:{grpc_port}", ssl=True,
                                                  root_certificates=str(pki.ca))
        assert client.is_server_ready()
        result = client.infer("simple", triton_grpc_inputs())
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1").reshape(-1), np.arange(16) - 3)
        client.close()
        # A plaintext gRPC client cannot talk to the TLS port.
        client = grpcclient.InferenceServerClient(f"localhost:{grpc_port}")
        with pytest.raises(Exception):
            client.is_server_ready(client_timeout=3)
        client.close()
        assert metric(url, "oxinfer_connections_dropped_total", verify=str(pki.ca), port="http", reason="tls_handshake") >= 1
    finally:
        server.stop()


def test_mutual_tls_identity_and_refusals(tmp_path, pki):
    cert, key = pki.server
    client_cert, client_key = pki.client
    server = serve(tmp_path, tls=f'cert = "{cert}"\nkey = "{key}"\nclient_ca = "{pki.ca}"')
    try:
        http_port, grpc_port = port_of(server.address), port_of(server.grpc_address)
        url = f"https://localhost:{http_port}"
        infer = ["-H", "content-type: application/json", "-H", "x-request-id: mtls-curl",
                 "-d", json.dumps({"inputs": SIMPLE_INPUTS}), f"{url}/v2/models/simple/infer"]
        # No client certificate, or one from another CA: the handshake is refused.
        assert curl("--cacert", pki.ca, *infer).returncode != 0
        stranger_cert, stranger_key = pki.stranger
        assert curl("--cacert", pki.ca, "--cert", stranger_cert, "--key", stranger_key, *infer).returncode != 0
        client = grpcclient.InferenceServerClient(f"localhost:{grpc_port}", ssl=True, root_certificates=str(pki.ca))
        with pytest.raises(Exception):
            client.infer("simple", triton_grpc_inputs(), client_timeout=5)
        client.close()
        # The right certificate: served, and its subject is the identity in the log record.
        done = curl("--cacert", pki.ca, "--cert", client_cert, "--key", client_key, "-o", "/dev/null",
                    "-w", "%{http_code}", *infer)
        assert done.stdout == "200", done.stderr
        client = httpclient.InferenceServerClient(
            f"localhost:{http_port}", ssl=True,
            ssl_options={"ca_certs": str(pki.ca), "certfile": str(client_cert), "keyfile": str(client_key)})
        client.infer("simple", triton_http_inputs(), request_id="mtls-http")
        client.close()
        client = grpcclient.InferenceServerClient(
            f"localhost:{grpc_port}", ssl=True, root_certificates=str(pki.ca),
            private_key=str(client_key), certificate_chain=str(client_cert))
        client.infer("simple", triton_grpc_inputs(), request_id="mtls-grpc")
        client.close()
        # The kserve SDK, REST and gRPC (in its own process: see kserve_checks.py).
        script = pathlib.Path(__file__).parent / "kserve_checks.py"
        done = subprocess.run(
            [sys.executable, str(script), "--tls", url, f"localhost:{grpc_port}", str(pki.ca), str(client_cert), str(client_key)],
            capture_output=True, text=True, timeout=120, cwd=script.parent)
        assert done.returncode == 0, done.stdout + done.stderr
        by_id = wait_for(lambda: {r["request_id"]: r for r in records(tmp_path)}
                         if {"mtls-curl", "mtls-http", "mtls-grpc"} <= {r["request_id"] for r in records(tmp_path)} else None,
                         what="the log records")
        for request_id in ("mtls-curl", "mtls-http", "mtls-grpc"):
            identity = by_id[request_id]["identity"]
            assert identity is not None and "CN=fraud-api" in identity and "O=Example" in identity, by_id[request_id]
        assert metric(url, "oxinfer_connections_dropped_total", verify=str(pki.ca), cert=(str(client_cert), str(client_key)),
                      port="http", reason="tls_handshake") >= 2
        assert any("TLS handshake failed" in line and "127.0.0.1" in line for line in server.log)
    finally:
        server.stop()


def test_certificates_are_rotated_on_sighup_without_dropping_connections(tmp_path, pki):
    live = tmp_path / "live"
    live.mkdir()
    (live / "tls.crt").write_bytes(pki.server[0].read_bytes())
    (live / "tls.key").write_bytes(pki.server[1].read_bytes())
    server = serve(tmp_path, tls=f'cert = "{live / "tls.crt"}"\nkey = "{live / "tls.key"}"', log=False)
    try:
        port = port_of(server.address)
        context = ssl.create_default_context(cafile=str(pki.ca))
        kept = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
        kept.request("GET", "/v2/health/ready")
        response = kept.getresponse()
        assert response.status == 200
        response.read()
        first = kept.sock.getpeercert()
        assert ("organizationName", "rotated") not in [item for rdn in first["subject"] for item in rdn]
        # cert-manager style: new files replace the old ones, then SIGHUP.
        (live / "tls.key.new").write_bytes(pki.server_b[1].read_bytes())
        (live / "tls.crt.new").write_bytes(pki.server_b[0].read_bytes())
        (live / "tls.key.new").rename(live / "tls.key")
        (live / "tls.crt.new").rename(live / "tls.crt")
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any("TLS certificates re-read" in line for line in server.log), what="the reload")
        fresh = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
        fresh.request("GET", "/v2/health/ready")
        assert fresh.getresponse().status == 200
        subject = [item for rdn in fresh.sock.getpeercert()["subject"] for item in rdn]
        assert ("organizationName", "rotated") in subject
        # The connection made before the rotation is still served.
        kept.request("GET", "/v2/health/ready")
        assert kept.getresponse().status == 200
        fresh.close()
        kept.close()
        # A broken rotation (a key that does not parse) keeps the previous certificate.
        (live / "tls.key").write_text("not a key")
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any("TLS certificates not re-read" in line for line in server.log), what="the refusal")
        again = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
        again.request("GET", "/v2/health/ready")
        assert again.getresponse().status == 200
        again.close()
        # Files renewed in place (a Kubernetes Secret volume) are noticed without a signal.
        (live / "tls.key").write_bytes(pki.server[1].read_bytes())
        (live / "tls.crt").write_bytes(pki.server[0].read_bytes())
        wait_for(lambda: any("TLS certificate files changed: re-read" in line for line in server.log),
                 timeout=25, what="the poll to notice the new files")
        polled = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
        polled.request("GET", "/v2/health/ready")
        assert polled.getresponse().status == 200
        subject = [item for rdn in polled.sock.getpeercert()["subject"] for item in rdn]
        assert ("organizationName", "rotated") not in subject
        polled.close()
    finally:
        server.stop()


def test_bad_tls_files_fail_at_startup_with_the_path_and_reason(tmp_path, pki):
    cert, key = pki.server
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    cases = [
        (f'cert = "{cert}"\nkey = "{tmp_path / "missing.key"}"', "missing.key"),
        (f'cert = "{garbage}"\nkey = "{key}"', "garbage.pem"),
        (f'cert = "{cert}"\nkey = "{pki.client[1]}"', "client.key"),
        (f'cert = "{cert}"\nkey = "{key}"\nclient_ca = "{garbage}"', "garbage.pem"),
    ]
    for tls, named in cases:
        manifest = tmp_path / "bad.toml"
        manifest.write_text(f"[server.tls]\n{tls}\n")
        done = run_oxinfer("check", "--manifest", str(manifest))
        assert done.returncode == 1, (tls, done.stdout, done.stderr)
        assert named in done.stderr and "[server.tls]" in done.stderr, done.stderr
    manifest = tmp_path / "good.toml"
    manifest.write_text(f'[server.tls]\ncert = "{cert}"\nkey = "{key}"\nclient_ca = "{pki.ca}"\n')
    done = run_oxinfer("check", "--manifest", str(manifest))
    assert done.returncode == 0 and "client certificates required" in done.stdout, done.stdout + done.stderr


# --- limits ------------------------------------------------------------------------------------


def test_slow_loris_connections_are_closed_while_a_normal_client_is_served(tmp_path):
    server = serve(tmp_path, "header_read_timeout_seconds = 2", log=False)
    try:
        host, port = server.address.rsplit(":", 1)
        grpc_host, grpc_port = server.grpc_address.rsplit(":", 1)
        started = time.monotonic()
        silent, trickling, grpc_silent = [], [], []
        for i in range(200):
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\n")
            (trickling if i % 2 else silent).append(s)
        for _ in range(20):
            grpc_silent.append(socket.create_connection((grpc_host, int(grpc_port)), timeout=10))
        stop = threading.Event()

        def trickle():
            # One more header line every half second, for as long as the server lets it.
            while not stop.is_set():
                for s in list(trickling):
                    try:
                        s.sendall(b"X-Slow: a\r\n")
                    except OSError:
                        trickling.remove(s)
                stop.wait(0.5)

        threading.Thread(target=trickle, daemon=True).start()
        worst = 0.0
        with requests.Session() as normal:
            while time.monotonic() - started < 5:
                t = time.monotonic()
                assert normal.get(f"{server.url}/v2/health/ready", timeout=1).status_code == 200
                worst = max(worst, time.monotonic() - t)
                time.sleep(0.1)
        stop.set()
        assert worst < 1.0, worst

        def closed(s):
            return closed_within(s, time.monotonic(), 2, trickle=False) is not None

        everyone = silent + [s for s in trickling] + grpc_silent
        still_open = [s for s in silent + grpc_silent if not closed(s)]
        assert not still_open, f"{len(still_open)} slow connections still open after 5 s"
        assert not trickling or all(closed(s) for s in trickling)
        for s in everyone:
            s.close()
        dropped = metric(server.url, "oxinfer_connections_dropped_total", port="http", reason="header_timeout")
        assert dropped >= 200, dropped
        assert metric(server.url, "oxinfer_connections_dropped_total", port="grpc", reason="header_timeout") >= 20
    finally:
        server.stop()


def closed_within(s, started, seconds, trickle):
    """Seconds from `started` until the server closed `s` (None if not within `seconds`),
    sending a header line every half second when `trickle`."""
    s.settimeout(0.5)
    while time.monotonic() - started < seconds:
        try:
            if trickle:
                s.sendall(b"X-Slow: a\r\n")
            if not s.recv(65536):
                return time.monotonic() - started
            # hyper may answer 408 before closing; the connection must still end.
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started
    return None


@pytest.mark.parametrize("trickle", [True, False], ids=["trickling", "silent"])
def test_a_later_request_whose_headers_stall_is_closed_at_the_header_timeout(tmp_path, trickle):
    # After a first request, the next one's headers have header_read_timeout_seconds too, well
    # before the idle timeout: hyper times them, and the connection's own timer wakes it when
    # the client has gone silent.
    server = serve(tmp_path, "header_read_timeout_seconds = 2\nidle_timeout_seconds = 300", log=False)
    try:
        host, port = server.address.rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=10)
        # hyper times the next head from the first response; sent half a second after
        # connecting, that deadline comes after the connection's first header timeout (from
        # connecting), whose wake-up of the task would otherwise come just in time.
        time.sleep(0.5)
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 200 " in s.recv(65536)
        started = time.monotonic()
        s.sendall(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\n")
        closed_after = closed_within(s, started, 10, trickle)
        s.close()
        assert closed_after is not None, "still open after 10 s"
        assert 1.5 <= closed_after < 4.5, closed_after
        # A client that sends its requests in time is not affected.
        with requests.Session() as normal:
            for _ in range(3):
                assert normal.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
                time.sleep(1)
    finally:
        server.stop()


def test_idle_connections_are_closed_but_busy_ones_are_not(tmp_path):
    server = serve(tmp_path, "idle_timeout_seconds = 2", log=False)
    try:
        host, port = server.address.rsplit(":", 1)
        idle = socket.create_connection((host, int(port)), timeout=10)
        idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 200 " in idle.recv(65536)
        t = time.monotonic()
        assert idle.recv(65536) == b""  # closed by the server
        waited = time.monotonic() - t
        assert 1.5 < waited < 6, waited
        # A request whose body takes longer than the idle timeout to arrive, a piece every
        # second, is in flight, not idle.
        busy = held_request(server.address)
        for piece in range(4):
            time.sleep(1)
            busy.sendall(BODY[10 + piece : 11 + piece])
        busy.sendall(BODY[14:])
        answer = busy.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        busy.close()
        idle.close()
        assert metric(server.url, "oxinfer_connections_dropped_total", port="http", reason="idle_timeout") >= 1
        # A request in flight on which nothing moves for the idle timeout (a client that went
        # silent mid-body) is closed too.
        stalled = held_request(server.address)
        t = time.monotonic()
        try:
            assert stalled.recv(65536) == b""  # closed, with no answer
        except ConnectionResetError:
            pass
        assert 1.5 < time.monotonic() - t < 6
        stalled.close()
        assert metric(server.url, "oxinfer_connections_dropped_total", port="http", reason="stalled") >= 1
    finally:
        server.stop()


def test_max_connections_closes_the_one_over_at_once(tmp_path):
    server = serve(tmp_path, "max_connections = 8", log=False)
    try:
        host, port = server.address.rsplit(":", 1)
        held = [socket.create_connection((host, int(port)), timeout=10) for _ in range(8)]
        time.sleep(0.3)
        extra = socket.create_connection((host, int(port)), timeout=5)
        t = time.monotonic()
        try:
            assert extra.recv(100) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - t < 2
        extra.close()
        held.pop().close()
        held.pop().close()
        # A slot is free again: served.
        status = wait_for(lambda: _try_get(f"{server.url}/v2/health/ready"), what="a free slot")
        assert status == 200
        assert metric(server.url, "oxinfer_connections_dropped_total", port="http", reason="max_connections") >= 1
        for s in held:
            s.close()
    finally:
        server.stop()


def _try_get(url):
    try:
        return requests.get(url, timeout=2).status_code
    except requests.RequestException:
        return None


def test_max_concurrent_requests_answers_429_and_resource_exhausted_at_once(tmp_path):
    server = serve(tmp_path, "max_concurrent_requests = 2", log=False)
    try:
        holders = [held_request(server.address) for _ in range(2)]
        time.sleep(0.3)
        t = time.monotonic()
        refused = requests.post(f"{server.url}/v2/models/simple/infer", json={"inputs": SIMPLE_INPUTS}, timeout=5)
        assert time.monotonic() - t < 1
        assert refused.status_code == 429, refused.text
        assert "max_concurrent_requests" in refused.json()["error"]
        assert refused.headers["retry-after"] == "1"
        client = grpcclient.InferenceServerClient(server.grpc_address)
        with pytest.raises(Exception) as caught:
            client.infer("simple", triton_grpc_inputs(), client_timeout=5)
        assert "RESOURCE_EXHAUSTED" in str(caught.value) or "StatusCode.RESOURCE_EXHAUSTED" in repr(caught.value)
        # Probes and metrics are still answered.
        assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
        assert client.is_server_ready()
        client.close()
        assert metric(server.url, "oxinfer_requests_over_limit_total") >= 2
        # One request finishes: the next is served.
        holders[0].sendall(BODY[10:])
        assert holders[0].recv(65536).startswith(b"HTTP/1.1 200")
        ok = requests.post(f"{server.url}/v2/models/simple/infer", json={"inputs": SIMPLE_INPUTS}, timeout=5)
        assert ok.status_code == 200, ok.text
        for s in holders:
            s.close()
    finally:
        server.stop()


def test_both_ports_announce_the_http2_limits(tmp_path):
    server = serve(tmp_path, "http2_max_concurrent_streams = 100\nhttp2_max_header_list_bytes = 32768", log=False)
    try:
        for address in (server.address, server.grpc_address):
            settings, _ = h2_handshake(address)
            assert settings.get(0x3) == 100, (address, settings)  # SETTINGS_MAX_CONCURRENT_STREAMS
            assert settings.get(0x6) == 32768, (address, settings)  # SETTINGS_MAX_HEADER_LIST_SIZE
            assert settings.get(0x4) == 16 * 1024 * 1024, (address, settings)  # both ports' stream window
    finally:
        server.stop()
    server = serve(tmp_path, log=False)
    try:
        for address in (server.address, server.grpc_address):
            settings, _ = h2_handshake(address)
            assert settings.get(0x3) == 256 and settings.get(0x6) == 65536, (address, settings)
    finally:
        server.stop()


def test_callers_without_a_token_hold_no_request_slot(tmp_path):
    """Access control runs before max_concurrent_requests: with every slot taken, a call without
    a token is told 401 / UNAUTHENTICATED, not 429, and tokenless floods cannot fill the slots."""
    import hashlib
    secret = "limit-secret"
    server = serve(tmp_path, "max_concurrent_requests = 1", log=False)
    server.stop()
    manifest = tmp_path / "m.toml"
    manifest.write_text(manifest.read_text() + f'[[auth.tokens]]\nname = "t"\nsha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"\nscopes = ["infer", "read"]\n')
    server = Server(manifest)
    try:
        # Tokenless calls first: none of them takes the one slot.
        for _ in range(5):
            assert requests.post(f"{server.url}/v2/models/simple/infer", json={"inputs": SIMPLE_INPUTS}, timeout=5).status_code == 401
        holder = held_request(server.address, f"Authorization: Bearer {secret}\r\n")
        time.sleep(0.3)
        assert requests.post(f"{server.url}/v2/models/simple/infer", json={"inputs": SIMPLE_INPUTS}, timeout=5).status_code == 401
        full = requests.post(f"{server.url}/v2/models/simple/infer", json={"inputs": SIMPLE_INPUTS},
                             headers={"Authorization": f"Bearer {secret}"}, timeout=5)
        assert full.status_code == 429, full.text
        client = grpcclient.InferenceServerClient(server.grpc_address)
        with pytest.raises(Exception) as caught:
            client.infer("simple", triton_grpc_inputs(), client_timeout=5)
        assert "UNAUTHENTICATED" in str(caught.value)
        client.close()
        holder.sendall(BODY[10:])
        assert holder.recv(65536).startswith(b"HTTP/1.1 200")
        holder.close()
    finally:
        server.stop()


def test_an_http2_client_that_never_opens_its_window_is_closed(tmp_path):
    """An HTTP/2 client that announces a zero stream window and asks for a response with a body:
    the response can never be sent, so its request stays in flight with no byte moving. The
    connection is closed after the idle timeout (reason "stalled"), and its slot is freed."""
    server = serve(tmp_path, "idle_timeout_seconds = 2\nmax_concurrent_requests = 1", log=False)
    try:
        host, port = server.address.rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=10)
        path = b"/v2/models/simple"
        # HPACK: :method GET (static 2), :scheme http (static 6), :path literal, :authority literal.
        block = b"\x82\x86" + b"\x04" + bytes([len(path)]) + path + b"\x01\x01x"
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                  + frame(0x4, 0, 0, struct.pack(">HI", 0x4, 0))  # SETTINGS_INITIAL_WINDOW_SIZE = 0
                  + frame(0x1, 0x5, 1, block))  # HEADERS, END_STREAM | END_HEADERS
        # The slot is taken: another request is refused while the stalled one holds it.
        time.sleep(0.5)
        assert requests.get(f"{server.url}/v2/models/simple", timeout=5).status_code == 429
        t = time.monotonic()
        closed = False
        while time.monotonic() - t < 8:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                closed = True
                break
            if not data:
                closed = True
                break
            # Acknowledge the server's SETTINGS, so only the window holds the response back.
            if b"\x04\x00\x00\x00\x00\x00" in data:
                s.sendall(frame(0x4, 0x1, 0))
        waited = time.monotonic() - t
        assert closed and waited < 6, waited
        s.close()
        assert metric(server.url, "oxinfer_connections_dropped_total", port="http", reason="stalled") >= 1
        # The slot came back with the connection.
        assert requests.get(f"{server.url}/v2/models/simple", timeout=5).status_code == 200
    finally:
        server.stop()
