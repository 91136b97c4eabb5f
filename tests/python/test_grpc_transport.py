"""The gRPC port's transport settings through the real binary: the HTTP/2 windows it announces
are the documented ones, and responses are compressed only as `[server] grpc_compression` says
(counted on the wire by a relay between tritonclient and the server)."""


import numpy as np
import tritonclient.grpc as grpcclient

from conftest import MODELS, Relay, Server, h2_handshake


def serve(tmp_path, extra=""):
    manifest = tmp_path / "m.toml"
    manifest.write_text(f'{extra}\n[[models]]\nname = "identity"\nruntime = "tract"\npath = "{MODELS / "identity.onnx"}"\n')
    return Server(manifest)


def test_the_announced_http2_windows_are_the_documented_ones(tmp_path):
    server = serve(tmp_path)
    try:
        settings, window = h2_handshake(server.grpc_address)
        assert settings.get(0x4) == 16 * 1024 * 1024, settings  # SETTINGS_INITIAL_WINDOW_SIZE
        assert window == 32 * 1024 * 1024 - 65535  # the connection window, raised from 64 KiB
    finally:
        server.stop()


def received(server, **infer_args):
    """Bytes the server sent for one 602 KB all-zeros identity request from tritonclient."""
    relay = Relay(server.grpc_address)
    try:
        client = grpcclient.InferenceServerClient(relay.address)
        x = np.zeros((9408, 16), dtype=np.float32)  # 602,112 bytes, as a [1,3,224,224] image
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        out = client.infer("identity", [inp], **infer_args).as_numpy("y")
        np.testing.assert_array_equal(out, x)
        client.close()
        return relay.from_server
    finally:
        relay.close()


def test_responses_are_compressed_only_when_the_rule_says(tmp_path):
    server = serve(tmp_path)
    try:
        # tritonclient advertises gzip by default; the request is not compressed: neither is
        # the response.
        assert received(server) > 600_000
        # A compressed request gets a compressed response (zeros shrink to almost nothing).
        assert received(server, compression_algorithm="gzip") < 60_000
    finally:
        server.stop()
    always = tmp_path / "always"
    always.mkdir()
    server = serve(always, '[server]\ngrpc_compression = "always"')
    try:
        assert received(server) < 60_000
    finally:
        server.stop()
    never = tmp_path / "never"
    never.mkdir()
    server = serve(never, '[server]\ngrpc_compression = "never"')
    try:
        assert received(server, compression_algorithm="gzip") > 600_000
    finally:
        server.stop()
