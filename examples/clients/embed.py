"""Sentence embeddings from oxinfer's candle runtime with tritonclient (HTTP): strings in.

    cargo run --release -p oxinfer -- serve --manifest examples/minilm.toml
    python examples/clients/embed.py [localhost:8080]
"""

import sys

import numpy as np
import tritonclient.http as httpclient

sentences = [b"A man is eating food.", b"A man is eating a meal.", b"The stock market fell sharply today."]
client = httpclient.InferenceServerClient(sys.argv[1] if len(sys.argv) > 1 else "localhost:8080")
text = httpclient.InferInput("text", [len(sentences)], "BYTES")
text.set_data_from_numpy(np.array(sentences, dtype=np.object_))
embeddings = client.infer("minilm", [text]).as_numpy("embedding")  # float32, unit-length rows
print("shape", embeddings.shape)
print("cosine similarities:\n", np.round(embeddings @ embeddings.T, 3))
