"""The benchmark tools answer correctly, so that bench/run.py's numbers come from real work.

bench-floor (the bare axum handler, the bare tonic service) must compute the same sums as oxinfer
serving add.onnx and echo what it is sent, and grpc-load must complete requests without errors
against oxinfer's gRPC API.
"""

import contextlib
import json
import pathlib
import subprocess
import time

import pytest
import requests

from conftest import Server, free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEBUG = ROOT / "target" / "debug"

A = [float(i) for i in range(16)]
B = [0.5] * 16
REQUEST = {"inputs": [
    {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": A},
    {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": B},
]}


@contextlib.contextmanager
def bench_floor(*args, grpc=True):
    """bench-floor on free ports (REST, and gRPC unless `grpc` is false), with `args` after the
    addresses, once it says it listens: yields (REST port, gRPC port or None)."""
    port, grpc_port = free_port(), free_port() if grpc else None
    addresses = [f"127.0.0.1:{port}"] + ([f"127.0.0.1:{grpc_port}"] if grpc else [])
    floor = subprocess.Popen([str(DEBUG / "bench-floor"), *addresses, *args], stderr=subprocess.PIPE, text=True)
    try:
        assert "floor listening on" in floor.stderr.readline()
        if grpc:
            assert "gRPC floor listening on" in floor.stderr.readline()
        yield port, grpc_port
    finally:
        floor.terminate()
        floor.wait()


def add_inputs(grpcclient):
    """The add model's two inputs, A and B, for tritonclient's gRPC client."""
    import numpy as np

    inputs = [grpcclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    inputs[0].set_data_from_numpy(np.array([A], dtype=np.float32))
    inputs[1].set_data_from_numpy(np.array([B], dtype=np.float32))
    return inputs


def test_floor_adds_like_oxinfer(tmp_path):
    with bench_floor(grpc=False) as (port, _):
        r = requests.post(f"http://127.0.0.1:{port}/v2/models/add/infer", json=REQUEST, timeout=10)
        assert r.status_code == 200, r.text
        floor_out = r.json()["outputs"][0]
    manifest = tmp_path / "add.toml"
    manifest.write_text(f'[[models]]\nname = "add"\nruntime = "tract"\npath = "{ROOT / "examples/models/add.onnx"}"\n')
    s = Server(manifest)
    try:
        ours = requests.post(f"{s.url}/v2/models/add/infer", json=REQUEST, timeout=10).json()["outputs"][0]
    finally:
        s.stop()
    assert floor_out["data"] == ours["data"] == [a + b for a, b in zip(A, B)]
    assert floor_out["shape"] == ours["shape"] == [1, 16]


def test_grpc_load_completes_requests_without_errors(tmp_path):
    manifest = tmp_path / "add.toml"
    manifest.write_text(
        f'[[models]]\nname = "add"\nruntime = "tract"\npath = "{ROOT / "examples/models/add.onnx"}"\n'
    )
    request = tmp_path / "add.json"
    request.write_text(json.dumps(REQUEST))
    s = Server(manifest)
    try:
        out = subprocess.run(
            [str(DEBUG / "grpc-load"), s.grpc_address, "add", str(request), "2", "1"],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["errors"] == 0 and result["requests"] > 10, result
        assert 0 < result["p50_us"] <= result["p99_us"]
        stats = requests.get(f"{s.url}/v2/models/add/stats", timeout=10).json()["model_stats"][0]
        # Every request it counted reached the model (plus its warm-up requests).
        assert stats["inference_count"] >= result["requests"]
        assert stats["inference_stats"]["fail"]["count"] == 0
    finally:
        s.stop()


def test_floor_echoes_bodies_and_answers_grpc_like_oxinfer(tmp_path):
    """The echo floor returns what it read over REST, and the gRPC floor answers ModelInfer
    through a real client: the sum for add (as oxinfer does), the inputs for anything else."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    with bench_floor() as (port, grpc_port):
        body = bytes(range(256)) * 4096  # 1 MiB, above any default body limit
        r = requests.post(f"http://127.0.0.1:{port}/echo", data=body, timeout=10)
        assert r.status_code == 200 and r.content == body

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        result = client.infer("add", add_inputs(grpcclient))
        assert result.as_numpy("OUTPUT0").tolist() == [[a + b for a, b in zip(A, B)]]

        image = np.arange(3 * 224 * 224, dtype=np.float32).reshape(1, 3, 224, 224)
        x = grpcclient.InferInput("x", list(image.shape), "FP32")
        x.set_data_from_numpy(image)
        echoed = client.infer("tensor", [x]).as_numpy("x")
        assert echoed.shape == image.shape and np.array_equal(echoed, image)

        # Every other method of the service is refused, not answered with something made up.
        with pytest.raises(Exception, match="UNIMPLEMENTED|ModelInfer only"):
            client.get_server_metadata()
        client.close()


def test_the_busy_floor_spends_its_work_and_still_adds():
    """`bench-floor --work-ns N` spins for N ns in each gRPC ModelInfer before it answers (the
    calibrated floor of bench/run.py's section 1), and refuses a value that is not a number."""
    import tritonclient.grpc as grpcclient

    refused = subprocess.run([str(DEBUG / "bench-floor"), "127.0.0.1:0", "--work-ns", "soon"],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "--work-ns takes a number of nanoseconds" in refused.stderr

    work_s = 0.05
    with bench_floor("--work-ns", str(int(work_s * 1e9))) as (_, grpc_port):
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        inputs = add_inputs(grpcclient)
        client.infer("add", inputs)  # the connection is made
        started = time.monotonic()
        result = client.infer("add", inputs)
        # A lower bound only: the handler cannot answer before its busy loop ends.
        assert time.monotonic() - started >= work_s
        assert result.as_numpy("OUTPUT0").tolist() == [[a + b for a, b in zip(A, B)]]
        client.close()


def bench_run():
    """bench/run.py as a module (its main() runs only as a script)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_groups_name_the_code_that_ran():
    """The profile section counts each perf sample to the crate or library whose code ran."""
    run = bench_run()
    group = run.profile_group
    assert group("[kernel.kallsyms]", "k", "_raw_spin_unlock_irqrestore").startswith("kernel")
    assert group("oxinfer", ".", "mi_free").startswith("memory allocator")
    assert group("libc.so.6", ".", "_int_malloc").startswith("memory allocator")
    assert group("libc.so.6", ".", "cfree@GLIBC_2.2.5").startswith("memory allocator")
    assert group("libc.so.6", ".", "__memmove_avx_unaligned_erms").startswith("memcpy")
    assert group("[vdso]", ".", "__vdso_clock_gettime").startswith("clock reads")
    assert group("oxinfer", ".", "oxinfer_server::scheduler::worker") == "oxinfer's own code"
    assert group("oxinfer", ".", "<oxinfer_tract::TractModel as oxinfer_core::runtime::Model>::execute") == "oxinfer's own code"
    assert group("oxinfer", ".", "tract_core::plan::SimplePlan<F,O>::run").startswith("the model")
    assert group("oxinfer", ".", "<hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::parse").startswith("HTTP")
    assert group("oxinfer", ".", "core::ptr::drop_in_place<h2::proto::streams::Streams>").startswith("Rust core")
    assert group("bench-floor", ".", "prost::encoding::merge_loop").startswith("gRPC")
    assert group("oxinfer", ".", "serde_json::de::Deserializer<R>::parse_number").startswith("JSON")
    assert group("bench-floor", ".", "<&mut serde_json::de::Deserializer<R> as serde_core::de::Deserializer>::deserialize_f32").startswith("JSON")
    assert group("bench-floor", ".", "<f32 as zmij::private::Sealed>::write_to_zmij_buffer").startswith("JSON")
    assert group("bench-floor", ".", "<F as axum::handler::Handler<(M,T1,T2),S>>::call::{{closure}}").startswith("routing")
    assert group("libc.so.6", ".", "__GI___writev").startswith("libc")
    assert group("oxinfer", ".", "<tokio_util::codec::framed_impl::FramedImpl<T,U,R> as futures_core::stream::Stream>::poll_next").startswith("async runtime")
    assert group("oxinfer", ".", "chacha20::backends::avx2::rng_inner").startswith("telemetry and ids")
    assert group("oxinfer", ".", "something_unknown") == "other"
    labels = {label for label, _ in run.PROFILE_GROUPS}
    assert len(labels) == len(run.PROFILE_GROUPS), "every group has its own label"


def test_rss_parts_add_up_to_the_rss():
    """The memory section's split of a process's RSS (/proc/PID/smaps) covers all of it."""
    import os
    run = bench_run()
    data = bytearray(64 * 1024 * 1024)  # 64 MiB of anonymous memory, touched
    for i in range(0, len(data), 4096):
        data[i] = 1
    parts = run.rss_parts_mib(os.getpid())
    rss = int(pathlib.Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024
    assert parts["anonymous"] >= 64
    assert parts["executable"] > 0 and parts["other libraries"] > 0
    # (This test process may have ONNX Runtime loaded already, by another test's import.)
    assert set(parts) == {"executable", "libonnxruntime", "other libraries", "anonymous"}
    assert abs(sum(parts.values()) - rss) < 0.05 * rss, (parts, rss)


WRK_REPORT = """Running 5s test @ http://127.0.0.1:8080/v2/models/minilm/infer
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.68s   120.00ms   2.40s    70.00%
    Req/Sec    15.00      5.00     30.00     70.00%
  Latency Distribution
     50%    1.68s
     75%    1.75s
     90%    1.90s
     99%    2.40s
  80 requests in 5.01s, 60.00KB read
{extra}Requests/sec:     15.97
Transfer/sec:     11.98KB
"""


def test_wrk_reports_are_read_and_uncounted_answers_refused():
    """Latencies in seconds are read as such; a run with answers wrk did not count (it leaves
    timed-out ones out of its latency distribution) is an error, never a p50 of 0."""
    run = bench_run()
    r = run.parse_wrk(WRK_REPORT.format(extra=""), "url")
    assert r == {"rps": 15.97, "p50_us": 1_680_000.0, "p99_us": 2_400_000.0, "requests": 80}
    for extra in ("  Socket errors: connect 0, read 0, write 0, timeout 12\n",
                  "  Non-2xx or 3xx responses: 3\n"):
        with pytest.raises(RuntimeError):
            run.parse_wrk(WRK_REPORT.format(extra=extra), "url")
    assert run.parse_wrk(WRK_REPORT.format(extra="  Socket errors: connect 0, read 2, write 0, timeout 0\n"), "url")["requests"] == 80
    assert run.WRK_TIMEOUT_S >= 30


def test_floor_and_oxinfer_are_measured_in_turn_and_reported_by_their_medians():
    """Section 1's ratios come from alternating rounds: the order of the measurements
    interleaves the servers, and each number is the median of its own rounds."""
    run = bench_run()
    order = []
    readings = {"floor": iter([100.0, 300.0, 200.0]), "oxinfer": iter([50.0, 70.0, 60.0])}

    def measure(server):
        order.append(server)
        rps = next(readings[server])
        return {"rps": rps, "p50_us": 1e6 / rps, "note": "kept out"}

    out = run.alternate(measure, ["floor", "oxinfer"], rounds=3)
    assert order == ["floor", "oxinfer"] * 3
    assert out["floor"]["rps"] == 200.0 and out["oxinfer"]["rps"] == 60.0
    # Each number is its own median (the p50 of the median run here, not in general).
    assert out["floor"]["p50_us"] == 1e6 / 200.0
    assert [r["rps"] for r in out["oxinfer"]["rounds"]] == [50.0, 70.0, 60.0]
    assert "note" not in out["floor"]
    mixed = run.median_of_rounds([{"rps": 1, "p50_us": 9}, {"rps": 3, "p50_us": 7}, {"rps": 2, "p50_us": 8}])
    assert (mixed["rps"], mixed["p50_us"]) == (2, 8)
    with pytest.raises(AssertionError):
        run.median_of_rounds([{"rps": 1}, {"rps": 2}])
    assert run.TINY_ROUNDS % 2 == 1


def test_a_load_of_one_connection_runs_its_client_on_one_cpu():
    """c=1 loads (wrk, h2load, grpc-load) run under the prefix one_connection_pin gives: on
    a machine of several CPUs, the client runs on the lowest one this process may use; loads of
    several connections run as they are."""
    import os
    import sys

    run = bench_run()
    cpus = os.sched_getaffinity(0)
    assert run.one_connection_pin(16) == []
    assert run.one_connection_pin(4) == []
    prefix = run.one_connection_pin(1)
    if len(cpus) < 2:
        assert prefix == []
        return
    out = subprocess.run(
        prefix + [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert json.loads(out) == [min(cpus)]


def test_the_calibrated_floor_report_derives_the_cut_from_the_busy_floor():
    """The busy floor's slope (time per request per µs of work) turns oxinfer's distance from
    75% of the floor into microseconds of work to cut."""
    run = bench_run()
    cal = {
        "floor": {"rps": 80_000.0, "user_us": 8.0, "sys_us": 4.5},
        "oxinfer": {"rps": 50_000.0, "user_us": 14.0, "sys_us": 6.5},
        # 6 µs of work: 12.5 -> 20.0 µs per request, a slope of 1.25.
        "busy floor": {"rps": 50_000.0, "user_us": 14.5, "sys_us": 6.6},
        "work_ns": 6000,
    }
    text = "\n".join(run.calibrated_report(cal))
    assert "| the floor + 6.0 µs of busy work per request | 50,000 | 14.5 | 6.6 |" in text
    assert "serves 1.00x oxinfer's requests/s" in text
    assert "from 4.5 to 6.6 µs per request (oxinfer: 6.5)" in text
    # 75% of 80k is 60k, 16.67 µs per request; oxinfer is at 20.0: 3.33 µs / 1.25 = 2.7 µs.
    assert "about\n2.7 µs less user-space time per request, of the 6.0 µs" in text
