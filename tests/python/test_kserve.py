"""The kserve SDK (REST v2 and gRPC clients), in a subprocess: see kserve_checks.py for why."""

import pathlib
import subprocess
import sys


def test_kserve_sdk_rest_and_grpc(server):
    script = pathlib.Path(__file__).parent / "kserve_checks.py"
    result = subprocess.run(
        [sys.executable, str(script), server.url, server.grpc_address],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=script.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kserve REST and gRPC checks passed" in result.stdout
