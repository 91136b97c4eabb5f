"""Calls the example server with Triton's Python client (pip install tritonclient[http]).

    cargo run --release -p oxinfer -- serve --manifest examples/oxinfer.toml
    python examples/clients/triton_http.py
"""

import numpy as np
import tritonclient.http as httpclient

client = httpclient.InferenceServerClient(url="127.0.0.1:8080")
print("ready:", client.is_server_ready(), client.get_model_metadata("simple")["inputs"])

a = np.arange(16, dtype=np.int32).reshape(1, 16)
b = np.ones((1, 16), dtype=np.int32)
inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
inputs[0].set_data_from_numpy(a, binary_data=False)
inputs[1].set_data_from_numpy(b, binary_data=False)
outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)]
result = client.infer("simple", inputs, outputs=outputs, request_id="example-1")
print("INPUT0 + INPUT1 =", result.as_numpy("OUTPUT0"))
