#!/usr/bin/env python3
"""Exports the sentence-embedding model all-MiniLM-L6-v2 to ONNX from its shipped safetensors weights.

Usage:
    python examples/models/export_minilm.py --model-dir DIR --out OUT.onnx [--check-reference]

Why: oxinfer's candle runtime runs this model straight from `model.safetensors`. To check it
against other engines (onnxruntime, tract) we need an ONNX file of the *same* weights, made
independently of candle and without torch/transformers/optimum. This script builds one with only
`onnx` and `numpy`: it parses the safetensors file by hand (8-byte little-endian header length,
JSON header with dtype/shape/data_offsets, raw little-endian data) and writes the BERT forward
pass, the pooling (sentence-transformers `1_Pooling`: mean or cls) and the optional L2
normalisation (`sentence_transformers.models.Normalize` in modules.json) as one graph.

The graph:
    inputs   input_ids, attention_mask, token_type_ids: INT64 ["batch", "sequence"]
    output   embedding: FP32 ["batch", hidden]
It uses only basic ops (Gather, Add, Sub, Mul, Div, MatMul, Reshape, Transpose, Softmax,
ReduceMean, ReduceSum, Sqrt, Erf, Cast, Unsqueeze, Shape, Slice, Max; no LayerNormalization,
Gelu, Attention, Range, Expand, Where or com.microsoft ops) so that both onnxruntime and tract
run it with symbolic batch and sequence dims. LayerNorm and exact (erf) GELU are written from
primitives; torch Linear weights ([out, in]) are transposed at export time. Opset 17, IR 8, all
weights inline (~90 MB, no external data). The output is deterministic: the same weights give a
byte-identical file.

--check-reference also runs a plain-numpy float32 BERT forward pass (written directly from the
weights, not from the graph) on a few padded batches, runs the exported file with onnxruntime,
and asserts max |diff| < 1e-4 and cosine >= 0.99999 per row, and that a sentence alone and the
same sentence in a padded batch embed the same (max |diff| < 1e-5).
"""

import argparse
import json
import math
import pathlib
import struct
import sys
import time
import unicodedata

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
F32_MIN = -3.4028234663852886e38  # torch.finfo(torch.float32).min, as HF/candle mask with

ALLOWED_OPS = {
    "Gather", "Add", "Sub", "Mul", "Div", "MatMul", "Reshape", "Transpose", "Softmax",
    "ReduceMean", "ReduceSum", "Sqrt", "Erf", "Cast", "Unsqueeze", "Shape", "Slice", "Concat",
    "Max", "Constant",
}


# --------------------------------------------------------------------------------------------
# safetensors, by hand
# --------------------------------------------------------------------------------------------

def load_safetensors(path):
    """Returns {name: np.ndarray (float32 for float tensors)} from a .safetensors file."""
    data = pathlib.Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len].decode("utf-8"))
    base = 8 + header_len
    out = {}
    for name, info in sorted(header.items()):
        if name == "__metadata__":
            continue
        dtype, shape = info["dtype"], info["shape"]
        begin, end = info["data_offsets"]
        raw = data[base + begin:base + end]
        if dtype == "F32":
            arr = np.frombuffer(raw, dtype="<f4")
        elif dtype == "F16":
            arr = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif dtype == "BF16":
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif dtype == "F64":
            arr = np.frombuffer(raw, dtype="<f8").astype(np.float32)
        elif dtype == "I64":
            arr = np.frombuffer(raw, dtype="<i8")
        else:
            continue  # not needed by this export
        out[name] = arr.reshape(shape)
    return out


class Weights:
    """Looks tensors up by their BertModel name, with or without a `bert.` prefix."""

    def __init__(self, tensors):
        self.tensors = tensors
        prefixes = ["", "bert.", "model."]
        self.prefix = next((p for p in prefixes if p + "embeddings.word_embeddings.weight" in tensors), None)
        if self.prefix is None:
            raise SystemExit("no embeddings.word_embeddings.weight (with or without a bert. prefix)")

    def __call__(self, name):
        return np.ascontiguousarray(self.tensors[self.prefix + name], dtype=np.float32)


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------

def read_config(model_dir):
    model_dir = pathlib.Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise SystemExit(f"hidden_act {act!r} not supported (only exact 'gelu')")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise SystemExit("only absolute position embeddings are supported")
    pooling, normalize = "mean", False
    modules_path = model_dir / "modules.json"
    if modules_path.exists():
        modules = json.loads(modules_path.read_text())
        for m in modules:
            if m.get("type") == "sentence_transformers.models.Normalize":
                normalize = True
            if m.get("type") == "sentence_transformers.models.Pooling":
                pcfg = json.loads((model_dir / m.get("path", "1_Pooling") / "config.json").read_text())
                modes = [k for k, v in pcfg.items() if k.startswith("pooling_mode_") and v]
                if modes == ["pooling_mode_mean_tokens"]:
                    pooling = "mean"
                elif modes == ["pooling_mode_cls_token"]:
                    pooling = "cls"
                else:
                    raise SystemExit(f"pooling modes {modes} not supported (only mean or cls)")
    hidden = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    assert hidden % heads == 0
    return {
        "hidden": hidden,
        "heads": heads,
        "head_dim": hidden // heads,
        "layers": cfg["num_hidden_layers"],
        "intermediate": cfg["intermediate_size"],
        "eps": float(cfg.get("layer_norm_eps", 1e-12)),
        "pooling": pooling,
        "normalize": normalize,
    }


# --------------------------------------------------------------------------------------------
# ONNX graph
# --------------------------------------------------------------------------------------------

class GraphBuilder:
    def __init__(self):
        self.nodes = []
        self.inits = []
        self.count = 0

    def init(self, name, array):
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type, inputs, name, **attrs):
        self.count += 1
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=f"n{self.count}_{op_type}", **attrs))
        return name


def build_model(w, cfg):
    H, heads, hd, eps = cfg["hidden"], cfg["heads"], cfg["head_dim"], cfg["eps"]
    g = GraphBuilder()

    # shared constants
    g.init("c_one", np.array(1.0, np.float32))
    g.init("c_half", np.array(0.5, np.float32))
    g.init("c_eps", np.array(eps, np.float32))
    g.init("c_inv_sqrt2", np.array(1.0 / math.sqrt(2.0), np.float32))
    g.init("c_scale", np.array(1.0 / math.sqrt(hd), np.float32))
    g.init("c_f32min", np.array(F32_MIN, np.float32))
    g.init("c_ax_last", np.array([-1], np.int64))
    g.init("c_ax_1", np.array([1], np.int64))
    g.init("c_ax_12", np.array([1, 2], np.int64))
    g.init("c_i0", np.array([0], np.int64))
    g.init("c_i1", np.array([1], np.int64))
    g.init("c_i2", np.array([2], np.int64))
    g.init("c_heads_shape", np.array([0, 0, heads, hd], np.int64))
    g.init("c_merge_shape", np.array([0, 0, H], np.int64))

    def layer_norm(x, prefix, tag):
        gamma = g.init(f"{prefix}.weight", w(f"{prefix}.weight"))
        beta = g.init(f"{prefix}.bias", w(f"{prefix}.bias"))
        mean = g.op("ReduceMean", [x], f"{tag}/mean", axes=[-1], keepdims=1)
        d = g.op("Sub", [x, mean], f"{tag}/centered")
        sq = g.op("Mul", [d, d], f"{tag}/sq")
        var = g.op("ReduceMean", [sq], f"{tag}/var", axes=[-1], keepdims=1)
        ve = g.op("Add", [var, "c_eps"], f"{tag}/var_eps")
        std = g.op("Sqrt", [ve], f"{tag}/std")
        n = g.op("Div", [d, std], f"{tag}/norm")
        s = g.op("Mul", [n, gamma], f"{tag}/scaled")
        return g.op("Add", [s, beta], f"{tag}/out")

    def linear(x, prefix, tag):
        wt = g.init(f"{prefix}.weight_t", w(f"{prefix}.weight").T.copy())  # [in, out]
        b = g.init(f"{prefix}.bias", w(f"{prefix}.bias"))
        mm = g.op("MatMul", [x, wt], f"{tag}/matmul")
        return g.op("Add", [mm, b], f"{tag}/out")

    # ---- embeddings
    word = g.init("embeddings.word_embeddings.weight", w("embeddings.word_embeddings.weight"))
    pos = g.init("embeddings.position_embeddings.weight", w("embeddings.position_embeddings.weight"))
    typ = g.init("embeddings.token_type_embeddings.weight", w("embeddings.token_type_embeddings.weight"))
    we = g.op("Gather", [word, "input_ids"], "emb/word", axis=0)  # [B,S,H]
    te = g.op("Gather", [typ, "token_type_ids"], "emb/type", axis=0)  # [B,S,H]
    shape = g.op("Shape", ["input_ids"], "emb/ids_shape")  # [2]
    seq_len = g.op("Slice", [shape, "c_i1", "c_i2", "c_i0"], "emb/seq_len")  # [1] = [S]
    pe = g.op("Slice", [pos, "c_i0", seq_len, "c_i0"], "emb/pos")  # [S,H]
    x = g.op("Add", [we, te], "emb/word_type")
    x = g.op("Add", [x, pe], "emb/sum")
    x = layer_norm(x, "embeddings.LayerNorm", "emb/ln")

    # ---- extended attention mask: (1 - mask)[:, None, None, :] * f32::MIN
    mask_f = g.op("Cast", ["attention_mask"], "mask/f32", to=TensorProto.FLOAT)  # [B,S]
    inv = g.op("Sub", ["c_one", mask_f], "mask/inv")
    inv4 = g.op("Unsqueeze", [inv, "c_ax_12"], "mask/inv4")  # [B,1,1,S]
    ext = g.op("Mul", [inv4, "c_f32min"], "mask/ext")

    # ---- encoder
    for i in range(cfg["layers"]):
        p, t = f"encoder.layer.{i}", f"l{i}"
        q = linear(x, f"{p}.attention.self.query", f"{t}/q")
        k = linear(x, f"{p}.attention.self.key", f"{t}/k")
        v = linear(x, f"{p}.attention.self.value", f"{t}/v")
        q = g.op("Reshape", [q, "c_heads_shape"], f"{t}/q_heads")
        k = g.op("Reshape", [k, "c_heads_shape"], f"{t}/k_heads")
        v = g.op("Reshape", [v, "c_heads_shape"], f"{t}/v_heads")
        q = g.op("Transpose", [q], f"{t}/q_bhsd", perm=[0, 2, 1, 3])  # [B,h,S,d]
        k = g.op("Transpose", [k], f"{t}/k_bhds", perm=[0, 2, 3, 1])  # [B,h,d,S]
        v = g.op("Transpose", [v], f"{t}/v_bhsd", perm=[0, 2, 1, 3])  # [B,h,S,d]
        s = g.op("MatMul", [q, k], f"{t}/scores_raw")  # [B,h,S,S]
        s = g.op("Mul", [s, "c_scale"], f"{t}/scores_scaled")
        s = g.op("Add", [s, ext], f"{t}/scores_masked")
        pr = g.op("Softmax", [s], f"{t}/probs", axis=-1)
        c = g.op("MatMul", [pr, v], f"{t}/ctx")  # [B,h,S,d]
        c = g.op("Transpose", [c], f"{t}/ctx_bshd", perm=[0, 2, 1, 3])
        c = g.op("Reshape", [c, "c_merge_shape"], f"{t}/ctx_merged")  # [B,S,H]
        a = linear(c, f"{p}.attention.output.dense", f"{t}/attn_out")
        a = g.op("Add", [a, x], f"{t}/attn_res")
        x = layer_norm(a, f"{p}.attention.output.LayerNorm", f"{t}/attn_ln")
        f = linear(x, f"{p}.intermediate.dense", f"{t}/ffn_in")
        # exact GELU: 0.5 * f * (1 + erf(f / sqrt(2)))
        e = g.op("Mul", [f, "c_inv_sqrt2"], f"{t}/gelu_div")
        e = g.op("Erf", [e], f"{t}/gelu_erf")
        e = g.op("Add", [e, "c_one"], f"{t}/gelu_1p")
        e = g.op("Mul", [f, e], f"{t}/gelu_mul")
        e = g.op("Mul", [e, "c_half"], f"{t}/gelu")
        o = linear(e, f"{p}.output.dense", f"{t}/ffn_out")
        o = g.op("Add", [o, x], f"{t}/ffn_res")
        x = layer_norm(o, f"{p}.output.LayerNorm", f"{t}/ffn_ln")

    # ---- pooling
    if cfg["pooling"] == "mean":
        m3 = g.op("Unsqueeze", [mask_f, "c_ax_last"], "pool/mask3")  # [B,S,1]
        hm = g.op("Mul", [x, m3], "pool/masked")
        summed = g.op("ReduceSum", [hm, "c_ax_1"], "pool/sum", keepdims=0)  # [B,H]
        cnt = g.op("ReduceSum", [m3, "c_ax_1"], "pool/count", keepdims=0)  # [B,1]
        g.init("c_min_count", np.array(1e-9, np.float32))
        cnt = g.op("Max", [cnt, "c_min_count"], "pool/count_clamped")
        pooled = g.op("Div", [summed, cnt], "pool/mean")
    else:  # cls
        g.init("c_cls_index", np.array(0, np.int64))
        pooled = g.op("Gather", [x, "c_cls_index"], "pool/cls", axis=1)  # [B,H]

    # ---- L2 normalisation: x / max(||x||, 1e-12)
    if cfg["normalize"]:
        sq = g.op("Mul", [pooled, pooled], "norm/sq")
        ss = g.op("ReduceSum", [sq, "c_ax_last"], "norm/sumsq", keepdims=1)
        nrm = g.op("Sqrt", [ss], "norm/l2")
        g.init("c_min_norm", np.array(1e-12, np.float32))
        nrm = g.op("Max", [nrm, "c_min_norm"], "norm/l2_clamped")
        pooled = g.op("Div", [pooled, nrm], "norm/out")

    assert g.nodes[-1].output[0] == pooled
    g.nodes[-1].output[0] = "embedding"

    dims = ["batch", "sequence"]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, dims)
              for n in ("input_ids", "attention_mask", "token_type_ids")]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", H])]
    graph = helper.make_graph(g.nodes, "all_minilm_l6_v2", inputs, outputs, initializer=g.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="oxinfer examples/models/export_minilm.py",
        ir_version=IR_VERSION,
    )
    model.doc_string = (f"BERT sentence embedding ({cfg['layers']} layers, hidden {H}, {heads} heads), "
                        f"pooling={cfg['pooling']}, normalize={cfg['normalize']}; "
                        "exported from safetensors with onnx+numpy only")
    return model


# --------------------------------------------------------------------------------------------
# numpy reference (independent of the graph above)
# --------------------------------------------------------------------------------------------

_erf = np.frompyfunc(math.erf, 1, 1)


def reference_forward(w, cfg, ids, mask, types):
    f32 = np.float32
    H, heads, hd, eps = cfg["hidden"], cfg["heads"], cfg["head_dim"], f32(cfg["eps"])
    B, S = ids.shape

    def ln(x, prefix):
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w(prefix + ".weight") + w(prefix + ".bias")

    def dense(x, prefix):
        return x @ w(prefix + ".weight").T + w(prefix + ".bias")

    def gelu(x):
        return (x * f32(0.5) * (f32(1.0) + _erf(x.astype(np.float64) / math.sqrt(2.0)).astype(f32))).astype(f32)

    x = (w("embeddings.word_embeddings.weight")[ids]
         + w("embeddings.token_type_embeddings.weight")[types]
         + w("embeddings.position_embeddings.weight")[np.arange(S)][None])
    x = ln(x, "embeddings.LayerNorm")
    keep = mask.astype(bool)[:, None, None, :]  # [B,1,1,S]
    for i in range(cfg["layers"]):
        p = f"encoder.layer.{i}"
        q = dense(x, p + ".attention.self.query").reshape(B, S, heads, hd).transpose(0, 2, 1, 3)
        k = dense(x, p + ".attention.self.key").reshape(B, S, heads, hd).transpose(0, 2, 1, 3)
        v = dense(x, p + ".attention.self.value").reshape(B, S, heads, hd).transpose(0, 2, 1, 3)
        scores = q @ k.transpose(0, 1, 3, 2) / f32(math.sqrt(hd))
        scores = np.where(keep, scores, -np.inf)
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs = probs / probs.sum(axis=-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(B, S, H)
        x = ln(x + dense(ctx, p + ".attention.output.dense"), p + ".attention.output.LayerNorm")
        h = gelu(dense(x, p + ".intermediate.dense"))
        x = ln(x + dense(h, p + ".output.dense"), p + ".output.LayerNorm")
    if cfg["pooling"] == "mean":
        m = mask.astype(f32)[:, :, None]
        emb = (x * m).sum(axis=1) / np.maximum(m.sum(axis=1), f32(1e-9))
    else:
        emb = x[:, 0]
    if cfg["normalize"]:
        emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), f32(1e-12))
    return emb.astype(f32)


# --------------------------------------------------------------------------------------------
# a tiny BERT (uncased) WordPiece tokenizer from tokenizer.json, for the check only
# --------------------------------------------------------------------------------------------

def make_tokenizer(model_dir):
    try:
        import tokenizers  # noqa: F401  (optional)
        tok = tokenizers.Tokenizer.from_file(str(pathlib.Path(model_dir) / "tokenizer.json"))
        return lambda text: tok.encode(text).ids
    except ImportError:
        pass
    vocab = json.loads((pathlib.Path(model_dir) / "tokenizer.json").read_text())["model"]["vocab"]
    cls, sep, unk = vocab["[CLS]"], vocab["[SEP]"], vocab["[UNK]"]

    def words(text):
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        out, cur = [], ""
        for c in text:
            if c.isspace():
                if cur:
                    out.append(cur)
                cur = ""
            elif unicodedata.category(c).startswith("P") or (c.isascii() and not c.isalnum()):
                if cur:
                    out.append(cur)
                out.append(c)
                cur = ""
            else:
                cur += c
        if cur:
            out.append(cur)
        return out

    def encode(text):
        ids = [cls]
        for word in words(text):
            pieces, start = [], 0
            while start < len(word):
                end = len(word)
                while end > start:
                    piece = ("##" if start else "") + word[start:end]
                    if piece in vocab:
                        break
                    end -= 1
                if end == start:
                    pieces = [unk]
                    break
                pieces.append(vocab[piece])
                start = end
            ids.extend(pieces)
        return ids + [sep]

    return encode


def pad_batch(seqs):
    S = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), S), np.int64)
    mask = np.zeros((len(seqs), S), np.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return ids, mask, np.zeros_like(ids)


def check_reference(w, cfg, out_path, model_dir):
    import onnxruntime as ort

    encode = make_tokenizer(model_dir)
    sentences = [
        "This is an example sentence.",
        "Each sentence is converted into a fixed-size vector.",
        "The quick brown fox jumps over the lazy dog by the river.",
        "Hello!",
    ]
    seqs = [encode(s) for s in sentences]
    for s, ids in zip(sentences, seqs):
        print(f"  tokens {ids}  <- {s!r}")
    sess = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])

    def run_onnx(ids, mask, types):
        return sess.run(["embedding"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]

    ok = True
    batches = {"all four (padded)": seqs, "first two (padded)": seqs[:2], "last alone": seqs[-1:]}
    results = {}
    for label, batch in batches.items():
        ids, mask, types = pad_batch(batch)
        got = run_onnx(ids, mask, types)
        ref = reference_forward(w, cfg, ids, mask, types)
        results[label] = got
        diff = float(np.abs(got - ref).max())
        cos = (got * ref).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1))
        norms = np.linalg.norm(got, axis=-1)
        print(f"  {label:20s} shape {list(ids.shape)}  onnx vs numpy: max|diff| {diff:.3e}  "
              f"min cos {cos.min():.8f}  norms {np.round(norms, 6).tolist()}")
        ok &= diff < 1e-4 and bool((cos >= 0.99999).all())

    # a sentence alone vs inside a padded batch (it is the shortest one there)
    for idx in (0, 3):
        ids, mask, types = pad_batch([seqs[idx]])
        alone = run_onnx(ids, mask, types)[0]
        in_batch = results["all four (padded)"][idx]
        d = float(np.abs(alone - in_batch).max())
        pad = max(len(s) for s in seqs) - len(seqs[idx])
        print(f"  sentence {idx} alone vs in batch ({pad} pad tokens): max|diff| {d:.3e}")
        ok &= d < 1e-5

    sim = results["all four (padded)"] @ results["all four (padded)"].T
    print("  cosine similarity matrix (onnx):")
    for row in sim:
        print("   " + " ".join(f"{v:+.4f}" for v in row))
    return ok


# --------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", required=True, type=pathlib.Path)
    ap.add_argument("--out", required=True, type=pathlib.Path)
    ap.add_argument("--check-reference", action="store_true",
                    help="compare with a numpy forward pass through onnxruntime")
    args = ap.parse_args()

    t0 = time.perf_counter()
    cfg = read_config(args.model_dir)
    w = Weights(load_safetensors(args.model_dir / "model.safetensors"))
    model = build_model(w, cfg)
    onnx.checker.check_model(model)
    bad = sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")}
                 | ({n.op_type for n in model.graph.node} - ALLOWED_OPS))
    if bad:
        raise SystemExit(f"unexpected ops in the graph: {bad}")
    data = model.SerializeToString(deterministic=True)
    if len(data) >= 2 ** 31:
        raise SystemExit("model is over 2 GiB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    ops = sorted({n.op_type for n in model.graph.node})
    print(f"wrote {args.out} ({len(data) / 1e6:.1f} MB, {len(model.graph.node)} nodes, "
          f"{len(model.graph.initializer)} initializers) in {time.perf_counter() - t0:.1f}s")
    print(f"  tensor prefix {w.prefix!r}; layers {cfg['layers']}, hidden {cfg['hidden']}, "
          f"heads {cfg['heads']}, pooling {cfg['pooling']}, normalize {cfg['normalize']}")
    print(f"  ops: {', '.join(ops)}")

    if args.check_reference:
        ok = check_reference(w, cfg, args.out, args.model_dir)
        print(f"reference check {'PASSED' if ok else 'FAILED'} ({time.perf_counter() - t0:.1f}s total)")
        if not ok:
            sys.exit(1)


if __name__ == "__main__":
    main()
