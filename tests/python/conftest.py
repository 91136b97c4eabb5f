"""Fixtures for the conformance tests: a running oxinfer on a free port.

The binary is `$OXINFER_BIN` (scripts/test.sh sets it to the debug build), else
target/debug/oxinfer. A missing binary is an error, never a skip.
"""

import os
import pathlib
import queue
import re
import socket
import struct
import subprocess
import threading
import time

import pytest
import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = ROOT / "examples" / "models"


def _binary():
    path = pathlib.Path(os.environ.get("OXINFER_BIN", ROOT / "target" / "debug" / "oxinfer"))
    if not path.exists():
        raise RuntimeError(f"oxinfer binary not found at {path}: run `cargo build -p oxinfer` first")
    return path


def run_oxinfer(*args, env=None):
    """Runs the binary to completion; returns the CompletedProcess (text)."""
    return subprocess.run([str(_binary()), *args], capture_output=True, text=True, env=env, timeout=120)


class Server:
    def __init__(self, manifest, *args, env=None):
        """Starts `oxinfer serve` on free ports; `manifest` may be None when `args` name the models
        another way (--model-repository, --model-dir)."""
        source = ["--manifest", str(manifest)] if manifest is not None else []
        self.proc = subprocess.Popen(
            [str(_binary()), "serve", *source, "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.log = []
        found = {"HTTP": queue.Queue(), "gRPC": queue.Queue()}

        def pump():
            for line in self.proc.stderr:
                self.log.append(line)
                for kind, q in found.items():
                    if f"{kind} listening on " in line:
                        q.put(line.split(f"{kind} listening on ")[1].strip())

        threading.Thread(target=pump, daemon=True).start()
        try:
            self.address = found["HTTP"].get(timeout=60)
            self.grpc_address = found["gRPC"].get(timeout=10)
        except queue.Empty:
            self.stop()
            raise RuntimeError("oxinfer did not start:\n" + "".join(self.log))
        self.url = f"http://{self.address}"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def server():
    s = Server(ROOT / "examples" / "oxinfer.toml")
    yield s
    s.stop()
    assert s.proc.returncode == 0, "oxinfer should exit 0 on SIGTERM:\n" + "".join(s.log)


def wait_for(predicate, timeout=10.0, what="condition"):
    """Polls `predicate` until it returns something true, and returns that; fails on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def metric(url, name, verify=True, cert=None, headers=None, **labels):
    """One series of GET {url}/metrics (labels given exactly); fails when it is absent."""
    text = requests.get(f"{url}/metrics", timeout=5, verify=verify, cert=cert, headers=headers).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = rf"^{name}{{{re.escape(want)}}} (\S+)$" if labels else rf"^{name} (\S+)$"
    found = re.search(pattern, text, re.M)
    assert found, f"{name} {labels} not in /metrics"
    return float(found.group(1))


def h2_frame(kind, flags, stream, payload=b""):
    """One HTTP/2 frame: its 9-byte header (length, type, flags, stream id), then `payload`."""
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def h2_handshake(address):
    """The SETTINGS an HTTP/2 server sends a prior-knowledge client, and the connection window
    it raises to with its first WINDOW_UPDATE."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + struct.pack(">I", 0)[1:] + b"\x04\x00" + struct.pack(">I", 0))
        settings, window = None, None
        data = b""
        while settings is None or window is None:
            chunk = s.recv(65536)
            assert chunk, "the server closed the connection"
            data += chunk
            while len(data) >= 9:
                length = int.from_bytes(data[:3], "big")
                if len(data) < 9 + length:
                    break
                kind, flags, stream = data[3], data[4], struct.unpack(">I", data[5:9])[0]
                payload, data = data[9 : 9 + length], data[9 + length :]
                if kind == 0x4 and not flags & 0x1:
                    settings = dict(struct.unpack(">HI", payload[i : i + 6]) for i in range(0, len(payload), 6))
                elif kind == 0x8 and stream == 0:
                    window = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
        return settings, window


def free_port():
    """A TCP port free on 127.0.0.1 now (for servers that must be told their port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """A TCP relay on a free port in front of a server (`target`: "host:port"). It counts the
    bytes the server sends back (`from_server`); `close()` closes the listener and every relayed
    connection, so that the server is unreachable through it from then on."""

    def __init__(self, target):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.from_server = 0
        self.open = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.open += [client, upstream]
            threading.Thread(target=self.pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self.pump, args=(upstream, client, True), daemon=True).start()

    def pump(self, source, sink, count):
        try:
            while chunk := source.recv(65536):
                if count:
                    self.from_server += len(chunk)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            sink.close()

    def close(self):
        try:
            # A listener closed while accept() waits in another thread keeps listening; shut
            # it down first.
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for s in self.open:
            try:
                s.close()
            except OSError:
                pass
