#!/usr/bin/env python3
"""Creates the small example ONNX models that oxinfer's examples and tests serve.

Usage:
    python examples/models/make_models.py            # (re)write the models beside this script
    python examples/models/make_models.py --check    # fail if the committed files differ
    python examples/models/make_models.py --memory-bound target/models/wide.onnx
                                                      # the benchmark's 128 MB model (not committed)

Needs only the `onnx` and `numpy` packages (pinned in tests/python/requirements.txt). The output
is deterministic, so the committed models can be checked against this script in CI.

Models:
    simple.onnx    Triton's classic "simple" model: INT32 INPUT0, INPUT1 [-1,16] ->
                   OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1.
    mlp.onnx       FP32 x [-1,4] -> Linear(4,8) -> ReLU -> Linear(8,3) -> logits [-1,3],
                   and probs = softmax(logits) [-1,3]. Weights from a seeded generator.
    mlp_v2.onnx    The same graph with other weights (served as version 2 of "mlp").
    dtypes.onnx    One input/output pair per datatype, [-1,2] each: out_X = Identity(in_X),
                   except BOOL (Not), INT32 (+1) and FP64 (*2), so the tests see real compute.
    image.onnx     An "image model" with dynamic batch, height and width: FP32 image
                   [-1,3,-1,-1] -> mean [-1,3] (GlobalAveragePool) and max [-1,3] (ReduceMax).
    pairs.onnx     FP32 x [-1] -> Reshape to [-1,2] -> y = row sums [-1]; only even lengths can be
                   run (an odd length cannot be reshaped): a model with shapes that fail.
    identity.onnx  FP32 x [-1,16] -> y = Identity(x): the cheapest model, for overhead measurements.
    add.onnx       FP32 INPUT0, INPUT1 [-1,16] -> OUTPUT0 = INPUT0 + INPUT1: the benchmark suite's
                   tiny model (bench/), served by oxinfer and by MLServer alike.
    words.onnx     A toy text-embedding model for ONNX Runtime (ai.onnx.ml LabelEncoder): BYTES
                   text [-1] -> FP32 embedding [-1,4] = id(text) * [1,2,3,4] + [1,0,0,0], where
                   id is 1 for "cat", 2 for "dog", 3 for "car", 0 otherwise. It opts in to the
                   embedding APIs through [models.embeddings] (it has no tokenizer).

And, written only on request (--memory-bound PATH) since it is 128 MB:
    wide.onnx      FP32 x [-1,4096] -> MatMul(4096x4096) -> ReLU -> MatMul(4096x4096) -> y [-1,4096]:
                   weights four times this machine's 32 MiB last-level cache, so that at batch 1
                   every request streams all 128 MB from memory (matrix-vector products), while a
                   batch of N reuses each weight N times: the model dynamic batching is for
                   (bench/run.py section 7).
"""

import argparse
import pathlib
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
HERE = pathlib.Path(__file__).resolve().parent


def model(graph):
    m = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="oxinfer-make-models",
    )
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m)
    return m


def simple():
    shape = ["batch", 16]
    return model(
        helper.make_graph(
            [
                helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
                helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
            ],
            "simple",
            [
                helper.make_tensor_value_info("INPUT0", TensorProto.INT32, shape),
                helper.make_tensor_value_info("INPUT1", TensorProto.INT32, shape),
            ],
            [
                helper.make_tensor_value_info("OUTPUT0", TensorProto.INT32, shape),
                helper.make_tensor_value_info("OUTPUT1", TensorProto.INT32, shape),
            ],
        )
    )


def mlp(seed):
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((4, 8)).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    w2 = rng.standard_normal((8, 3)).astype(np.float32)
    b2 = rng.standard_normal(3).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(b2, "b2"),
    ]
    return model(
        helper.make_graph(
            [
                helper.make_node("MatMul", ["x", "w1"], ["h0"]),
                helper.make_node("Add", ["h0", "b1"], ["h1"]),
                helper.make_node("Relu", ["h1"], ["h2"]),
                helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
                helper.make_node("Add", ["h3", "b2"], ["logits"]),
                helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
            ],
            "mlp",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
            [
                helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
                helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3]),
            ],
            initializer=inits,
        )
    )


DTYPES = [
    ("BOOL", TensorProto.BOOL),
    ("UINT8", TensorProto.UINT8),
    ("UINT16", TensorProto.UINT16),
    ("UINT32", TensorProto.UINT32),
    ("UINT64", TensorProto.UINT64),
    ("INT8", TensorProto.INT8),
    ("INT16", TensorProto.INT16),
    ("INT32", TensorProto.INT32),
    ("INT64", TensorProto.INT64),
    ("FP16", TensorProto.FLOAT16),
    ("FP32", TensorProto.FLOAT),
    ("FP64", TensorProto.DOUBLE),
    ("BYTES", TensorProto.STRING),
]


def dtypes():
    nodes, inputs, outputs, inits = [], [], [], []
    for name, proto in DTYPES:
        i, o = f"in_{name}", f"out_{name}"
        inputs.append(helper.make_tensor_value_info(i, proto, ["batch", 2]))
        outputs.append(helper.make_tensor_value_info(o, proto, ["batch", 2]))
        if name == "BOOL":
            nodes.append(helper.make_node("Not", [i], [o]))
        elif name == "INT32":
            inits.append(numpy_helper.from_array(np.array(1, dtype=np.int32), "one_i32"))
            nodes.append(helper.make_node("Add", [i, "one_i32"], [o]))
        elif name == "FP64":
            inits.append(numpy_helper.from_array(np.array(2.0, dtype=np.float64), "two_f64"))
            nodes.append(helper.make_node("Mul", [i, "two_f64"], [o]))
        else:
            nodes.append(helper.make_node("Identity", [i], [o]))
    return model(helper.make_graph(nodes, "dtypes", inputs, outputs, initializer=inits))


def image():
    return model(
        helper.make_graph(
            [
                helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
                helper.make_node("Flatten", ["pooled"], ["mean"], axis=1),
                helper.make_node("ReduceMax", ["image"], ["max"], axes=[2, 3], keepdims=0),
            ],
            "image",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
            [
                helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch", 3]),
                helper.make_tensor_value_info("max", TensorProto.FLOAT, ["batch", 3]),
            ],
        )
    )


def pairs():
    return model(
        helper.make_graph(
            [
                helper.make_node("Reshape", ["x", "pair_shape"], ["paired"]),
                helper.make_node("ReduceSum", ["paired", "sum_axes"], ["y"], keepdims=0),
            ],
            "pairs",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["half"])],
            initializer=[
                numpy_helper.from_array(np.array([-1, 2], dtype=np.int64), "pair_shape"),
                numpy_helper.from_array(np.array([1], dtype=np.int64), "sum_axes"),
            ],
        )
    )


def identity():
    return model(
        helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "identity",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
        )
    )


def add():
    shape = ["batch", 16]
    return model(
        helper.make_graph(
            [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"])],
            "add",
            [
                helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, shape),
                helper.make_tensor_value_info("INPUT1", TensorProto.FLOAT, shape),
            ],
            [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, shape)],
        )
    )


def words():
    nodes = [
        helper.make_node(
            "LabelEncoder",
            ["text"],
            ["id"],
            domain="ai.onnx.ml",
            keys_strings=["cat", "dog", "car"],
            values_floats=[1.0, 2.0, 3.0],
            default_float=0.0,
        ),
        helper.make_node("Unsqueeze", ["id", "axis1"], ["column"]),
        helper.make_node("Mul", ["column", "direction"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offset"], ["embedding"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([[1, 2, 3, 4]], dtype=np.float32), "direction"),
        numpy_helper.from_array(np.array([[1, 0, 0, 0]], dtype=np.float32), "offset"),
    ]
    graph = helper.make_graph(
        nodes,
        "words",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 4])],
        initializer=inits,
    )
    m = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", 2)],
        producer_name="oxinfer-make-models",
    )
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m)
    return m


MODELS = {
    "simple.onnx": simple,
    "mlp.onnx": lambda: mlp(seed=1),
    "mlp_v2.onnx": lambda: mlp(seed=2),
    "dtypes.onnx": dtypes,
    "image.onnx": image,
    "pairs.onnx": pairs,
    "identity.onnx": identity,
    "add.onnx": add,
    "words.onnx": words,
}


def wide(size=4096):
    rng = np.random.default_rng(7)
    scale = np.float32(1.0 / np.sqrt(size))
    w1 = (rng.standard_normal((size, size), dtype=np.float32) * scale).astype(np.float32)
    w2 = (rng.standard_normal((size, size), dtype=np.float32) * scale).astype(np.float32)
    return model(
        helper.make_graph(
            [
                helper.make_node("MatMul", ["x", "w1"], ["h"]),
                helper.make_node("Relu", ["h"], ["r"]),
                helper.make_node("MatMul", ["r", "w2"], ["y"]),
            ],
            "wide",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", size])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", size])],
            [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
        )
    )


def write(directory):
    for name, build in MODELS.items():
        (directory / name).write_bytes(build().SerializeToString())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files")
    parser.add_argument("--out", type=pathlib.Path, default=HERE, help="output directory")
    parser.add_argument("--memory-bound", type=pathlib.Path, metavar="PATH",
                        help="write only the 128 MB memory-bound model (wide.onnx) to PATH")
    args = parser.parse_args()
    if args.memory_bound:
        args.memory_bound.parent.mkdir(parents=True, exist_ok=True)
        args.memory_bound.write_bytes(wide().SerializeToString())
        return 0
    if not args.check:
        args.out.mkdir(parents=True, exist_ok=True)
        write(args.out)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        write(tmp)
        stale = [n for n in MODELS if (tmp / n).read_bytes() != (HERE / n).read_bytes()]
    if stale:
        print(f"stale example models (rerun make_models.py): {stale}", file=sys.stderr)
        return 1
    print(f"example models are current: {sorted(MODELS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
