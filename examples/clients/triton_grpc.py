"""Calls the example server over gRPC with Triton's client (pip install tritonclient[grpc]).

    cargo run --release -p oxinfer -- serve --manifest examples/oxinfer.toml
    python examples/clients/triton_grpc.py
"""

import numpy as np
import tritonclient.grpc as grpcclient

client = grpcclient.InferenceServerClient(url="127.0.0.1:8081")
print("ready:", client.is_server_ready(), client.get_model_config("simple", as_json=True)["config"]["input"])

a = np.arange(16, dtype=np.int32).reshape(1, 16)
b = np.ones((1, 16), dtype=np.int32)
inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
inputs[0].set_data_from_numpy(a)  # sent as raw_input_contents
inputs[1].set_data_from_numpy(b)
result = client.infer("simple", inputs, request_id="example-grpc-1")
print("INPUT0 + INPUT1 =", result.as_numpy("OUTPUT0"))
print("statistics:", client.get_inference_statistics("simple", as_json=True)["model_stats"][0]["inference_stats"]["success"])
