"""Embedding models over OpenAI's and TEI's APIs, next to OIP, from the same loaded model.

all-MiniLM-L6-v2 (candle) is served three times: `minilm` as the runtime describes it,
`minilm-mrl` with a `[models.embeddings]` table (matryoshka, a small client batch limit), and
`minilm-strict` (16 tokens, no truncation). The real `openai` client calls `/v1/embeddings`;
TEI's routes get the requests TEI documents. Numbers are compared to the bit across the APIs.
"""

import base64
import json
import os
import pathlib
import threading
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest
import tokenizers

from conftest import Server, wait_for

# sbert.net's quickstart for all-MiniLM-L6-v2 publishes these similarities.
PUBLISHED = (
    ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."],
    np.array([[1.0000, 0.6660, 0.1046], [0.6660, 1.0000, 0.1411], [0.1046, 0.1411, 1.0000]]),
)


@pytest.fixture(scope="module")
def minilm_dir():
    value = os.environ.get("OXINFER_MINILM_DIR")
    if not value or not pathlib.Path(value).exists():
        raise RuntimeError("OXINFER_MINILM_DIR is not set: run the tests through scripts/test.sh")
    return pathlib.Path(value)


@pytest.fixture(scope="module")
def srv(tmp_path_factory, minilm_dir):
    tmp = tmp_path_factory.mktemp("embeddings")
    log = tmp / "inference.jsonl"
    simple = pathlib.Path(__file__).parents[2] / "examples" / "models" / "simple.onnx"
    manifest = tmp / "m.toml"
    manifest.write_text(
        f"""
[inference_log]
path = "{log}"

[[models]]
name = "minilm"
runtime = "candle"
path = "{minilm_dir}"
[models.scheduler]
max_batch_size = 32
max_queue_delay_us = 20000

[[models]]
name = "minilm-mrl"
runtime = "candle"
path = "{minilm_dir}"
[models.embeddings]
matryoshka = true
max_client_batch_size = 4

[[models]]
name = "minilm-strict"
runtime = "candle"
path = "{minilm_dir}"
[models.options]
max_sequence_length = 16
truncate = false

[[models]]
name = "simple"
runtime = "tract"
path = "{simple}"
"""
    )
    s = Server(manifest)
    s.log_path = log
    yield s
    s.stop()
    assert s.proc.returncode == 0, "".join(s.log)


@pytest.fixture(scope="module")
def client(srv):
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    tok = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def post(srv, path, body, headers=None):
    """(status, headers, parsed JSON) of a POST."""
    req = urllib.request.Request(
        srv.url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def get(srv, path):
    try:
        with urllib.request.urlopen(srv.url + path, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def f32(values):
    return np.array(values, dtype=np.float32)


def oip(srv, model, texts):
    status, _, body = post(srv, f"/v2/models/{model}/infer", {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]})
    assert status == 200, body
    out = body["outputs"][0]
    return f32(out["data"]).reshape(out["shape"])


def test_openai_client_single_and_batch(client, tokenizer):
    texts = ["A man is eating food.", "Rust gives memory safety without a garbage collector."]
    r = client.embeddings.create(model="minilm", input=texts)
    assert r.object == "list" and r.model == "minilm"
    assert [d.index for d in r.data] == [0, 1] and all(d.object == "embedding" for d in r.data)
    assert all(len(d.embedding) == 384 for d in r.data)
    # Real token counts, [CLS] and [SEP] included, as the model reads them.
    tokens = sum(len(tokenizer.encode(t).ids) for t in texts)
    assert r.usage.prompt_tokens == tokens == r.usage.total_tokens
    one = client.embeddings.create(model="minilm", input=texts[0])
    assert len(one.data) == 1
    np.testing.assert_array_equal(f32(one.data[0].embedding), f32(r.data[0].embedding))


def test_base64_is_little_endian_f32_and_equals_floats(srv, client):
    text = "The new movie is awesome"
    floats = client.embeddings.create(model="minilm", input=text, encoding_format="float").data[0].embedding
    status, _, body = post(srv, "/v1/embeddings", {"model": "minilm", "input": text, "encoding_format": "base64"})
    assert status == 200, body
    raw = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(raw, f32(floats))
    # The openai client asks for base64 by default and decodes it itself.
    default = client.embeddings.create(model="minilm", input=text).data[0].embedding
    np.testing.assert_array_equal(f32(default), raw)


def test_the_same_numbers_over_oip_openai_and_tei(srv, client):
    texts = ["The cat sits on the mat.", "Ünïcödé strings, emoji 🚀 and CJK 文字 are tokenized too."]
    for text in texts:
        via_oip = oip(srv, "minilm", [text])[0]
        via_openai = f32(client.embeddings.create(model="minilm", input=text, encoding_format="float").data[0].embedding)
        status, _, via_tei = post(srv, "/embed", {"inputs": text, "model": "minilm"})
        assert status == 200, via_tei
        np.testing.assert_array_equal(via_openai, via_oip)
        np.testing.assert_array_equal(f32(via_tei[0]), via_oip)


def test_published_similarities(client):
    sentences, published = PUBLISHED
    e = np.array([d.embedding for d in client.embeddings.create(model="minilm", input=sentences).data])
    np.testing.assert_allclose(e @ e.T, published, atol=1e-4)


def test_dimensions_truncate_and_renormalise_where_the_model_allows(client):
    full = f32(client.embeddings.create(model="minilm-mrl", input="hello there", encoding_format="float").data[0].embedding)
    short = f32(client.embeddings.create(model="minilm-mrl", input="hello there", dimensions=128, encoding_format="float").data[0].embedding)
    assert short.shape == (128,)
    np.testing.assert_allclose(short, full[:128] / np.linalg.norm(full[:128].astype(np.float64)), atol=1e-6)
    assert abs(float(np.linalg.norm(short)) - 1.0) < 1e-5
    same = client.embeddings.create(model="minilm", input="hello there", dimensions=384)
    assert len(same.data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="minilm", input="hello there", dimensions=128)
    assert e.value.body["param"] == "dimensions" and "matryoshka" in e.value.body["message"]


def test_errors_in_openais_shape(srv, client):
    def error(body, status):
        got, _, reply = post(srv, "/v1/embeddings", body)
        assert got == status, reply
        assert set(reply["error"]) == {"message", "type", "param", "code"}, reply
        return reply["error"]

    assert error({"model": "minilm", "input": ""}, 400)["param"] == "input"
    assert error({"model": "minilm", "input": []}, 400)["type"] == "invalid_request_error"
    assert "token ids" in error({"model": "minilm", "input": [101, 2023, 102]}, 400)["message"]
    assert "token ids" in error({"model": "minilm", "input": [[101, 102]]}, 400)["message"]
    assert "encoding_format" in error({"model": "minilm", "input": "x", "encoding_format": "int8"}, 400)["message"]
    assert "missing field `input`" in error({"model": "minilm"}, 400)["message"]
    e = error({"model": "nope", "input": "x"}, 404)
    assert e["code"] == "model_not_found" and e["param"] == "model"
    assert "not an embedding model" in error({"model": "simple", "input": "x"}, 404)["message"]
    assert "maximum allowed batch size 4" in error({"model": "minilm-mrl", "input": ["a"] * 5}, 413)["message"]
    assert "at most 16" in error({"model": "minilm-strict", "input": "word " * 40}, 413)["message"]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="minilm", input=[])


def test_models_lists_the_embedding_models(srv, client):
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["minilm", "minilm-mrl", "minilm-strict"]
    m = client.models.retrieve("minilm")
    assert m.object == "model" and m.owned_by == "oxinfer" and m.created > 1_700_000_000
    status, body = get(srv, "/v1/models/simple")
    assert status == 404 and body["error"]["param"] == "model"


def test_tei_embed(srv):
    text = "What is Deep Learning?"
    status, headers, one = post(srv, "/embed", {"inputs": text, "model": "minilm"})
    assert status == 200 and len(one) == 1 and len(one[0]) == 384
    assert headers["X-Request-ID"]
    status, _, batch = post(srv, "/embed", {"inputs": [text, "Deep learning is machine learning"]}, headers={"X-Model": "minilm"})
    assert status == 200 and len(batch) == 2
    np.testing.assert_array_equal(f32(batch[0]), f32(one[0]))
    assert abs(float(np.linalg.norm(f32(one[0]))) - 1.0) < 1e-5
    # Several embedding models served: one must be named.
    status, _, e = post(srv, "/embed", {"inputs": text})
    assert status == 422 and e["error_type"] == "validation" and "X-Model" in e["error"], e
    status, _, e = post(srv, "/embed", {"inputs": [], "model": "minilm"})
    assert status == 400 and e == {"error": "`inputs` cannot be empty", "error_type": "empty"}
    status, _, e = post(srv, "/embed", {"inputs": ["a"] * 5, "model": "minilm-mrl"})
    assert status == 413 and e["error_type"] == "validation", e
    status, _, e = post(srv, "/embed", {"inputs": text, "model": "minilm", "prompt_name": "query"})
    assert status == 422 and "has no prompts" in e["error"], e
    status, _, e = post(srv, "/embed", {"inputs": text, "model": "minilm", "normalize": False})
    assert status == 422 and "normalizes its vectors itself" in e["error"], e


def test_tei_truncation(srv):
    long = " ".join(f"word{i}" for i in range(100))
    # truncate defaults to false: an input over the limit is refused, as TEI does (413).
    status, _, e = post(srv, "/embed", {"inputs": long, "model": "minilm-strict"})
    assert status == 413 and e["error_type"] == "validation" and "at most 16" in e["error"], e
    status, _, right = post(srv, "/embed", {"inputs": long, "model": "minilm-strict", "truncate": True})
    assert status == 200, right
    status, _, left = post(srv, "/embed", {"inputs": long, "model": "minilm-strict", "truncate": True, "truncation_direction": "Left"})
    assert status == 200, left
    assert not np.array_equal(f32(right), f32(left))
    # Right truncation keeps the start: the same as embedding the start alone.
    status, tokens = 200, None
    status, _, tokens = post(srv, "/tokenize", {"inputs": long, "model": "minilm-strict", "add_special_tokens": False})
    kept = tokens[0][13]["stop"]  # 16 tokens = [CLS] + 14 + [SEP]
    status, _, start = post(srv, "/embed", {"inputs": long[:kept], "model": "minilm-strict"})
    assert status == 200, start
    np.testing.assert_array_equal(f32(right), f32(start))
    status, _, e = post(srv, "/embed", {"inputs": long, "model": "minilm-strict", "truncate": True, "truncation_direction": "Up"})
    assert status == 422 and "truncation_direction" in e["error"], e


def test_tei_tokenize_and_info(srv, tokenizer):
    text = "hello world, again"
    status, _, tokens = post(srv, "/tokenize", {"inputs": [text], "model": "minilm"})
    assert status == 200
    want = tokenizer.encode(text)
    assert [t["id"] for t in tokens[0]] == want.ids
    assert tokens[0][0] == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert [text[t["start"]:t["stop"]] for t in tokens[0][1:-1]] == ["hello", "world", ",", "again"]
    status, _, bare = post(srv, "/tokenize", {"inputs": text, "model": "minilm", "add_special_tokens": False})
    assert [t["id"] for t in bare[0]] == want.ids[1:-1]
    status, info = get(srv, "/info?model=minilm")
    assert status == 200
    assert info["model_id"] == "minilm" and len(info["model_sha"]) == 64
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == 256 and info["max_client_batch_size"] == 1024
    assert info["max_batch_requests"] == 32 and info["model_dtype"] == "float32"
    status, info = get(srv, "/info?model=minilm-strict")
    assert info["max_input_length"] == 16 and info["auto_truncate"] is False


def test_requests_from_every_api_batch_together_and_are_recorded(srv, client):
    def batched():
        status, _, raw = None, None, urllib.request.urlopen(srv.url + "/metrics", timeout=30).read().decode()
        for line in raw.splitlines():
            if line.startswith('oxinfer_scheduler_batched_executions_total{model="minilm"'):
                return float(line.split()[-1])
        return 0.0

    before = batched()
    results = []

    def one(i):
        text = f"sentence number {i}"
        if i % 3 == 0:
            results.append(oip(srv, "minilm", [text])[0])
        elif i % 3 == 1:
            results.append(f32(client.embeddings.create(model="minilm", input=text, user=f"user-{i}", encoding_format="float").data[0].embedding))
        else:
            results.append(f32(post(srv, "/embed", {"inputs": text, "model": "minilm"})[2][0]))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 12
    assert batched() > before, "requests from the three APIs were joined into shared executions"
    raw = urllib.request.urlopen(srv.url + "/metrics", timeout=30).read().decode()
    for api in ("openai", "tei", "http"):
        assert f'oxinfer_requests_total{{model="minilm",outcome="success",protocol="{api}",version="1"}}' in raw, api
    # The writer appends records shortly after their responses (it lets records gather for up
    # to a few ms before it writes): wait for them rather than read the file at once.
    def written():
        records = [json.loads(line) for line in open(srv.log_path)]
        openai_records = [r for r in records if r["protocol"] == "openai" and r.get("user", "").startswith("user-")]
        return (records, openai_records) if len(openai_records) >= 4 else None

    records, openai_records = wait_for(written, what="the 4 OpenAI records in the log")
    assert len(openai_records) == 4
    assert any(r["protocol"] == "tei" and r["status"] == "ok" for r in records)


def test_an_embeddings_table_must_fit_the_model(tmp_path):
    """`[models.embeddings]` on a model without a text input and a vector output is a load error
    that names what does not fit; `oxinfer check` reports it."""
    from conftest import run_oxinfer

    simple = pathlib.Path(__file__).parents[2] / "examples" / "models" / "simple.onnx"
    for table, needle in (
        ("", "`input` (the BYTES text input) is needed"),
        ('input = "INPUT0"\noutput = "OUTPUT0"', "input 'INPUT0' is INT32 [-1, 16]; a text input is BYTES [-1]"),
        ('input = "nope"\noutput = "OUTPUT0"', "the model has no input 'nope'"),
        ("max_client_batch_size = 0", "max_client_batch_size must be at least 1"),
    ):
        manifest = tmp_path / "m.toml"
        manifest.write_text(f'[[models]]\nname = "simple"\nruntime = "tract"\npath = "{simple}"\n[models.embeddings]\n{table}\n')
        r = run_oxinfer("check", "--manifest", str(manifest))
        assert r.returncode != 0 and needle in r.stderr, (table, r.stderr)


def test_any_runtime_opts_in_with_an_embeddings_table(tmp_path):
    """An ONNX model taking text (examples/models/words.onnx, on ONNX Runtime) served over both
    APIs by naming its input and output in [models.embeddings]. It has no tokenizer: usage
    counts words and /tokenize says why it cannot answer."""
    words = pathlib.Path(__file__).parents[2] / "examples" / "models" / "words.onnx"
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        f'[[models]]\nname = "words"\nruntime = "onnxruntime"\npath = "{words}"\n'
        '[models.embeddings]\ninput = "text"\noutput = "embedding"\n'
    )
    server = Server(manifest)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        r = client.embeddings.create(model="words", input=["cat", "the dog", "zebra"], encoding_format="float")
        want = np.array([[2, 2, 3, 4], [1, 0, 0, 0], [1, 0, 0, 0]], dtype=np.float32)
        np.testing.assert_array_equal(np.array([d.embedding for d in r.data], dtype=np.float32), want)
        assert r.usage.prompt_tokens == 4  # words: no tokenizer
        assert [m.id for m in client.models.list()] == ["words"]
        # TEI normalises (the model does not), and with one embedding model none needs naming.
        status, _, tei = post(server, "/embed", {"inputs": ["dog"]})
        assert status == 200, tei
        dog = np.array([3, 4, 6, 8], dtype=np.float64)
        np.testing.assert_allclose(tei[0], dog / np.linalg.norm(dog), rtol=1e-6)
        status, _, raw = post(server, "/embed", {"inputs": ["dog"], "normalize": False})
        assert raw == [[3.0, 4.0, 6.0, 8.0]]
        status, _, e = post(server, "/tokenize", {"inputs": "dog"})
        assert status == 422 and "has no tokenizer" in e["error"], e
        status, info = get(server, "/info")
        assert info["model_id"] == "words" and info["max_input_length"] is None
    finally:
        server.stop()


def test_a_tokenizer_json_beside_the_model_gives_real_token_counts(tmp_path, minilm_dir, tokenizer):
    """A model whose runtime does not tokenize gets token counts and /tokenize from the
    tokenizer.json beside it (or named by `tokenizer` in [models.embeddings])."""
    import shutil

    words = tmp_path / "words.onnx"
    shutil.copy(pathlib.Path(__file__).parents[2] / "examples" / "models" / "words.onnx", words)
    shutil.copy(minilm_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        f'[[models]]\nname = "words"\nruntime = "onnxruntime"\npath = "{words}"\n'
        '[models.embeddings]\ninput = "text"\noutput = "embedding"\n'
    )
    server = Server(manifest)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        texts = ["the cat", "a dog is running"]
        r = client.embeddings.create(model="words", input=texts)
        assert r.usage.prompt_tokens == sum(len(tokenizer.encode(t).ids) for t in texts)
        status, _, tokens = post(server, "/tokenize", {"inputs": "a dog is running"})
        assert status == 200 and [t["id"] for t in tokens[0]] == tokenizer.encode("a dog is running").ids
    finally:
        server.stop()
