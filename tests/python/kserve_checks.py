"""The kserve SDK against a running oxinfer: the v2 REST client and the gRPC client.

Run as a script by test_kserve.py, in its own process: kserve and tritonclient.grpc both register
the `inference` protobuf package, so they cannot be imported into one Python process.

    python kserve_checks.py HTTP_URL GRPC_ADDRESS
    python kserve_checks.py --tls HTTPS_URL GRPC_ADDRESS CA_PEM CLIENT_PEM CLIENT_KEY
    python kserve_checks.py --auth HTTP_URL GRPC_ADDRESS TOKEN
"""

import asyncio
import ssl
import sys

import numpy as np

import kserve
from reference import mlp_numpy

RTOL, ATOL = 1e-5, 1e-6


async def rest(url):
    client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=30))
    try:
        assert await client.is_server_live(url) is True
        assert await client.is_server_ready(url) is True
        assert await client.is_model_ready(url, "mlp") is True
        assert await client.is_model_ready(url, "nope") is False
        x = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
        request = kserve.InferRequest(
            model_name="mlp",
            request_id="ks-1",
            infer_inputs=[kserve.InferInput("x", [2, 4], "FP32", data=x.flatten().tolist())],
        )
        response = await client.infer(url, request, model_name="mlp")
        assert response.id == "ks-1"
        assert response.model_name == "mlp"
        # kserve's REST client drops model_version when it parses a response; the numbers show
        # that version 2 (the highest) answered.
        outputs = {o.name: o.as_numpy() for o in response.outputs}
        logits, probs = mlp_numpy("mlp_v2.onnx", x)
        np.testing.assert_allclose(outputs["logits"].reshape(2, 3), logits, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(outputs["probs"].reshape(2, 3), probs, rtol=RTOL, atol=ATOL)
        body = {
            "inputs": [
                {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
                {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [3] * 16},
            ]
        }
        response = await client.infer(url, body, model_name="simple")
        got = {o.name: o.as_numpy() for o in response.outputs}
        np.testing.assert_array_equal(got["OUTPUT1"].reshape(-1), np.arange(16) - 3)
    finally:
        await client.close()


async def grpc(address):
    client = kserve.InferenceGRPCClient(address, timeout=30)
    try:
        assert await client.is_server_live() is True
        assert await client.is_server_ready() is True
        assert await client.is_model_ready("simple") is True
        x = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
        inp = kserve.InferInput("x", [3, 4], "FP32")
        inp.set_data_from_numpy(x, binary_data=True)  # raw_input_contents
        request = kserve.InferRequest(model_name="mlp", infer_inputs=[inp], request_id="kg-1", model_version="1")
        response = await client.infer(request)
        assert response.id == "kg-1"
        assert response.model_name == "mlp" and response.model_version == "1"
        outputs = {o.name: o.as_numpy() for o in response.outputs}
        logits, probs = mlp_numpy("mlp.onnx", x)
        np.testing.assert_allclose(outputs["logits"], logits, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(outputs["probs"], probs, rtol=RTOL, atol=ATOL)
        # Typed contents instead of raw.
        typed = kserve.InferInput("x", [3, 4], "FP32", data=x.flatten().tolist())
        response = await client.infer(kserve.InferRequest(model_name="mlp", infer_inputs=[typed], model_version="1"))
        np.testing.assert_allclose({o.name: o.as_numpy() for o in response.outputs}["logits"], logits, rtol=RTOL, atol=ATOL)
    finally:
        await client.close()


SIMPLE = {
    "inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [3] * 16},
    ]
}


async def tls(url, address, ca, cert, key):
    """Both clients over (mutual) TLS, trusting only the test CA."""
    # kserve 0.16's RESTConfig drops `cert` (it builds a transport it never uses); the client
    # certificate goes in through an SSL context passed as `verify`.
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=30, verify=context))
    try:
        assert await client.is_server_ready(url) is True
        response = await client.infer(url, SIMPLE, model_name="simple")
        got = {o.name: o.as_numpy() for o in response.outputs}
        np.testing.assert_array_equal(got["OUTPUT0"].reshape(-1), np.arange(16) + 3)
    finally:
        await client.close()
    client = kserve.InferenceGRPCClient(
        address, use_ssl=True, root_certificates=ca, private_key=key, certificate_chain=cert, timeout=30
    )
    try:
        assert await client.is_server_ready() is True
        inp = kserve.InferInput("INPUT0", [1, 16], "INT32", data=list(range(16)))
        other = kserve.InferInput("INPUT1", [1, 16], "INT32", data=[3] * 16)
        response = await client.infer(kserve.InferRequest(model_name="simple", infer_inputs=[inp, other]))
        got = {o.name: o.as_numpy() for o in response.outputs}
        np.testing.assert_array_equal(got["OUTPUT1"].reshape(-1), np.arange(16) - 3)
    finally:
        await client.close()


async def auth(url, address, token):
    """Both clients with a bearer token (`[auth]`): allowed with it, refused without."""
    headers = {"Authorization": f"Bearer {token}"}
    client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=30))
    try:
        response = await client.infer(url, SIMPLE, model_name="simple", headers=headers)
        got = {o.name: o.as_numpy() for o in response.outputs}
        np.testing.assert_array_equal(got["OUTPUT0"].reshape(-1), np.arange(16) + 3)
        try:
            await client.infer(url, SIMPLE, model_name="simple")
            raise AssertionError("a call without the token was served")
        except Exception as e:  # kserve raises httpx.HTTPStatusError
            assert "401" in str(e), e
    finally:
        await client.close()
    client = kserve.InferenceGRPCClient(address, timeout=30)
    try:
        inp = kserve.InferInput("INPUT0", [1, 16], "INT32", data=list(range(16)))
        other = kserve.InferInput("INPUT1", [1, 16], "INT32", data=[3] * 16)
        request = kserve.InferRequest(model_name="simple", infer_inputs=[inp, other])
        response = await client.infer(request, headers=[("authorization", f"Bearer {token}")])
        got = {o.name: o.as_numpy() for o in response.outputs}
        np.testing.assert_array_equal(got["OUTPUT1"].reshape(-1), np.arange(16) - 3)
        try:
            await client.infer(request)
            raise AssertionError("a call without the token was served")
        except Exception as e:
            assert "UNAUTHENTICATED" in str(e), e
    finally:
        await client.close()


def main():
    if sys.argv[1] == "--auth":
        asyncio.run(auth(*sys.argv[2:5]))
        print("kserve auth checks passed")
        return
    if sys.argv[1] == "--tls":
        asyncio.run(tls(*sys.argv[2:7]))
        print("kserve TLS checks passed")
        return
    http_url, grpc_address = sys.argv[1], sys.argv[2]
    asyncio.run(rest(http_url))
    asyncio.run(grpc(grpc_address))
    print("kserve REST and gRPC checks passed")


if __name__ == "__main__":
    main()
