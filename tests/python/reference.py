"""Independent references for the example models, computed without oxinfer.

Two independent routes: the ONNX reference evaluator shipped with the `onnx` package (a pure
Python implementation of the ONNX operators), and, for the MLP, plain numpy on the weights read
from the file.
"""

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from conftest import MODELS


def evaluate(model_file, feeds):
    """Runs an example model with onnx's reference evaluator; returns {output name: array}."""
    model = onnx.load(str(MODELS / model_file))
    names = [o.name for o in model.graph.output]
    return dict(zip(names, ReferenceEvaluator(model).run(None, feeds)))


def mlp_numpy(model_file, x):
    """The MLP by hand: softmax(relu(x @ w1 + b1) @ w2 + b2)."""
    w = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(MODELS / model_file)).graph.initializer}
    h = np.maximum(x @ w["w1"] + w["b1"], 0)
    logits = h @ w["w2"] + w["b2"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return logits, e / e.sum(axis=1, keepdims=True)
