"""Fixtures for the conformance tests: a running oxinfer on a free port.

The binary is `$OXINFER_BIN` (scripts/test.sh sets it to the debug build), else
target/debug/oxinfer. A missing binary is an error, never a skip.
"""

import os
import pathlib
import queue
import subprocess
import threading

import pytest

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
