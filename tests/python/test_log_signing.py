"""Protecting the inference log: file modes, signed checkpoints (`[inference_log] signing_key`),
`oxinfer audit keygen` and `oxinfer audit verify --public-key [--require-signed]`, through the
real binary.
"""

import hashlib
import json
import os
import shutil
import stat
import subprocess
import time

import pytest
import requests

from conftest import MODELS, Server, run_oxinfer

HEX = set("0123456789abcdef")


def body(i):
    return {"id": f"req-{i}", "inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [i] * 16},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}]}


def manifest(tmp, signing_key="keys/log.pem", **settings):
    table = {"path": "audit/inference.jsonl", **settings}
    if signing_key is not None:
        table["signing_key"] = str(signing_key)
    text = "[inference_log]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
    text += f'[[models]]\nname = "simple"\nruntime = "tract"\npath = "{MODELS / "simple.onnx"}"\n'
    path = tmp / "signed.toml"
    path.write_text(text)
    return path


def keygen(tmp, name="log"):
    (tmp / "keys").mkdir(exist_ok=True)
    private, public = tmp / "keys" / f"{name}.pem", tmp / "keys" / f"{name}.pub.pem"
    r = run_oxinfer("audit", "keygen", "--private", str(private), "--public", str(public))
    assert r.returncode == 0, r.stderr
    key_id = r.stdout.split("key id:")[1].split()[0]
    return private, public, key_id


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def lines(path):
    return path.read_text().splitlines(keepends=True)


def rehash(line):
    """The record `line` with its hash recomputed, as someone editing the file can."""
    record = json.loads(line)
    del record["hash"]
    body = json.dumps(record, separators=(",", ":"))
    return body[:-1] + f',"hash":"{hashlib.sha256(body.encode()).hexdigest()}"}}\n'


def verify(log, *args):
    return run_oxinfer("audit", "verify", *map(str, args), str(log))


def serve_requests(tmp, n, **settings):
    server = Server(manifest(tmp, **settings))
    try:
        for i in range(n):
            r = requests.post(f"{server.url}/v2/models/simple/infer", json=body(i), timeout=10)
            assert r.status_code == 200, r.text
    finally:
        server.stop()
    assert server.proc.returncode == 0, "".join(server.log)
    return tmp / "audit" / "inference.jsonl", server


def openssl_ed25519():
    return shutil.which("openssl") and subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519"], capture_output=True).returncode == 0


def test_checkpoints_sign_the_log_and_a_cut_tail_is_reported(tmp_path):
    private, public, key_id = keygen(tmp_path)
    assert len(key_id) == 16 and set(key_id) <= HEX
    assert mode(private) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----\n")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----\n")
    # keygen never overwrites a key.
    again = run_oxinfer("audit", "keygen", "--private", str(private), "--public", str(tmp_path / "x.pem"))
    assert again.returncode == 1 and "already exists" in again.stderr
    check = run_oxinfer("check", "--manifest", str(manifest(tmp_path, checkpoint_records=5)))
    assert check.returncode == 0, check.stderr
    assert f"inference log checkpoints signed by key {key_id}" in check.stdout

    log, server = serve_requests(tmp_path, 12, checkpoint_records=5)
    assert any("signed checkpoints" in line and key_id in line for line in server.log)
    # Created by the server: the file 0600, its directory 0700.
    assert mode(log) == 0o600
    assert mode(log.parent) == 0o700
    records = [json.loads(line) for line in lines(log)]
    shape = [r["checkpoint"]["reason"] if "checkpoint" in r else r["request_id"] for r in records]
    assert shape == [*[f"req-{i}" for i in range(5)], "records", *[f"req-{i}" for i in range(5, 10)], "records",
                     "req-10", "req-11", "shutdown"]
    for ix, record in enumerate(records):
        if "checkpoint" in record:
            cp = record["checkpoint"]
            assert cp["head"] == record["prev_hash"] == records[ix - 1]["hash"]
            assert cp["key_id"] == key_id and len(cp["signature"]) == 128 and set(cp["signature"]) <= HEX
            assert list(record) == ["format", "checkpoint", "timestamp", "prev_hash", "hash"]
    assert [r["checkpoint"]["records"] for r in records if "checkpoint" in r] == [5, 5, 2]

    # Signed throughout.
    ok = verify(log, "--public-key", public, "--require-signed")
    assert ok.returncode == 0, ok.stderr
    assert "OK: 12 record(s) and 3 checkpoint(s) intact" in ok.stdout
    assert f"signatures: 3 checkpoint(s) verified with key {key_id}" in ok.stdout
    assert "all 12 record(s) are covered by signed checkpoints" in ok.stdout
    last_line = ok.stdout.splitlines()[-1]
    assert last_line.startswith(f"the last checkpoint ({log}:15, ") and last_line.endswith(") was written at shutdown")
    assert ok.stderr == ""
    # Without a key: checkpoints are chained records, their signatures not checked.
    plain = verify(log)
    assert plain.returncode == 0 and "3 checkpoint(s) in the chain; their signatures were not checked" in plain.stdout
    # `show` still finds requests.
    show = run_oxinfer("audit", "show", "--id", "req-7", str(log))
    assert show.returncode == 0 and json.loads(show.stdout.splitlines()[1])["inputs"][0]["data"] == [7] * 16

    full = log.read_text()
    # The tail cut, shutdown checkpoint included: a valid chain, two records unsigned.
    log.write_text("".join(lines(log)[:-1]))
    cut = verify(log, "--public-key", public)
    assert cut.returncode == 0, cut.stderr
    assert "OK: 12 record(s) and 2 checkpoint(s) intact" in cut.stdout
    assert ("warning: 2 record(s) after the last signed checkpoint are not signed (written after it, or the tail "
            f"was cut); the last checkpoint is {log}:12") in cut.stderr
    assert "10 record(s) are covered by signed checkpoints" in cut.stdout
    assert f"the last checkpoint ({log}:12, " in cut.stdout
    assert ") is a periodic one (reason records), not a shutdown checkpoint" in cut.stdout
    strict = verify(log, "--public-key", public, "--require-signed")
    assert strict.returncode == 1
    assert "error: 2 record(s) after the last signed checkpoint are not signed" in strict.stderr
    assert "(--require-signed)" in strict.stderr
    # Cut back to a checkpoint: every record left is signed, but the last checkpoint is not a
    # shutdown one, and verify says so.
    log.write_text("".join(lines(log)[:12]))
    back = verify(log, "--public-key", public, "--require-signed")
    assert back.returncode == 0 and "all 10 record(s) are covered" in back.stdout
    assert "not a shutdown checkpoint" in back.stdout
    # No checkpoint left at all.
    log.write_text("".join(lines(log)[:5]))
    none = verify(log, "--public-key", public)
    assert none.returncode == 0
    assert "warning: no signed checkpoint in these files: none of the 5 record(s) is signed" in none.stderr
    assert verify(log, "--public-key", public, "--require-signed").returncode == 1

    # A checkpoint's signature changed, the record re-hashed so that the chain holds: exit 1.
    original = full.splitlines(keepends=True)
    last = json.loads(original[-1])
    sig = last["checkpoint"]["signature"]
    last["checkpoint"]["signature"] = ("1" if sig[0] == "0" else "0") + sig[1:]
    forged = rehash(json.dumps(last, separators=(",", ":")))
    log.write_text("".join(original[:-1]) + forged)
    assert verify(log).returncode == 0, "the chain itself is intact"
    bad = verify(log, "--public-key", public)
    assert bad.returncode == 1
    assert f"{log}:15: bad checkpoint signature (key {key_id})" in bad.stderr
    # Changed without re-hashing: the chain breaks at the checkpoint.
    log.write_text("".join(original[:-1]) + original[-1].replace(sig, last["checkpoint"]["signature"]))
    broken = verify(log, "--public-key", public)
    assert broken.returncode == 1 and f"{log}:15: broken record (checkpoint)" in broken.stderr
    # A request record altered and the whole file re-hashed: the signed heads no longer match.
    altered, prev = [], None
    for line in original:
        record = json.loads(line)
        if record.get("request_id") == "req-3":
            record["outputs"][0]["data"] = [0] * 16
        if prev is not None:
            record["prev_hash"] = prev
            if "checkpoint" in record:
                record["checkpoint"]["head"] = prev
        line = rehash(json.dumps(record, separators=(",", ":")))
        prev = json.loads(line)["hash"]
        altered.append(line)
    log.write_text("".join(altered))
    assert verify(log).returncode == 0
    rewritten = verify(log, "--public-key", public)
    assert rewritten.returncode == 1 and f"{log}:6: bad checkpoint signature" in rewritten.stderr

    # The wrong public key: exit 1, naming both keys.
    log.write_text(full)
    _, other, other_id = keygen(tmp_path, "other")
    wrong = verify(log, "--public-key", other)
    assert wrong.returncode == 1
    assert f"checkpoint signed by key {key_id}, not by the public key given ({other_id})" in wrong.stderr
    # Either of several keys (a key rotated over time).
    assert verify(log, "--public-key", other, "--public-key", public).returncode == 0
    # Not a public key.
    notkey = verify(log, "--public-key", private)
    assert notkey.returncode == 1 and "not an Ed25519 public key" in notkey.stderr

    # A log file others may read: a warning, the exit code unchanged.
    log.chmod(0o644)
    loose = verify(log, "--public-key", public)
    assert loose.returncode == 0
    assert f"warning: {log} is readable or writable by group or others (mode 0644)" in loose.stderr
    log.chmod(0o600)
    assert "warning" not in verify(log, "--public-key", public).stderr


def test_time_based_checkpoint_and_restart(tmp_path):
    _, public, _ = keygen(tmp_path)
    server = Server(manifest(tmp_path, checkpoint_seconds=1))
    log = tmp_path / "audit" / "inference.jsonl"
    try:
        for i in range(2):
            assert requests.post(f"{server.url}/v2/models/simple/infer", json=body(i), timeout=10).status_code == 200
        deadline = time.time() + 10
        while time.time() < deadline and '"reason":"interval"' not in log.read_text():
            time.sleep(0.2)
        # While the server runs: its records are signed by an interval checkpoint.
        live = verify(log, "--public-key", public, "--require-signed")
        assert live.returncode == 0, live.stderr
        assert "all 2 record(s) are covered" in live.stdout and "reason interval" in live.stdout
        time.sleep(1.5)
        # Nothing new: no further checkpoint.
        assert log.read_text().count('"checkpoint"') == 1
    finally:
        server.stop()
    records = [json.loads(line) for line in lines(log)]
    assert [r["checkpoint"]["reason"] for r in records if "checkpoint" in r] == ["interval", "shutdown"]
    assert records[-1]["checkpoint"]["records"] == 0
    # A restart continues the chain and the count; stopping without new records adds nothing.
    size = log.stat().st_size
    Server(manifest(tmp_path, checkpoint_seconds=1)).stop()
    assert log.stat().st_size == size
    log2, _ = serve_requests(tmp_path, 1, checkpoint_seconds=1)
    assert json.loads(lines(log2)[-1])["checkpoint"]["records"] == 1
    ok = verify(log2, "--public-key", public, "--require-signed")
    assert ok.returncode == 0 and "OK: 3 record(s) and 3 checkpoint(s) intact" in ok.stdout
    # The key replaced: the chain goes on, and verify needs both public keys.
    old_id = json.loads(lines(log)[-1])["checkpoint"]["key_id"]
    _, new_public, new_id = keygen(tmp_path, "new")
    serve_requests(tmp_path, 1, signing_key="keys/new.pem")
    both = verify(log, "--public-key", public, "--public-key", new_public, "--require-signed")
    assert both.returncode == 0, both.stderr
    assert f"signatures: 4 checkpoint(s) verified with key {old_id}, key {new_id}" in both.stdout
    only_old = verify(log, "--public-key", public)
    assert only_old.returncode == 1 and f"checkpoint signed by key {new_id}" in only_old.stderr


def rewrite_from(log, ix, edit):
    """Applies `edit` to the record on line `ix` (0-based) and re-hashes the chain from there, as
    anyone who can write the file can (the chain is not keyed)."""
    out, prev = lines(log)[:ix], None
    for n, line in enumerate(lines(log)[ix:]):
        record = json.loads(line)
        if n == 0:
            edit(record)
        if prev is not None:
            record["prev_hash"] = prev
            if "checkpoint" in record:
                record["checkpoint"]["head"] = prev
        line = rehash(json.dumps(record, separators=(",", ":")))
        prev = json.loads(line)["hash"]
        out.append(line)
    log.write_text("".join(out))


def killed_after(tmp, n, *, lines_on_disk, first=0, **settings):
    """A server that serves requests `first`.. `first + n - 1`, waits for the log to have
    `lines_on_disk` lines (its records and checkpoints written), then is killed (SIGKILL): no
    shutdown checkpoint."""
    server = Server(manifest(tmp, **settings))
    log = tmp / "audit" / "inference.jsonl"
    try:
        for i in range(first, first + n):
            r = requests.post(f"{server.url}/v2/models/simple/infer", json=body(i), timeout=10)
            assert r.status_code == 200, r.text
        deadline = time.time() + 10
        while time.time() < deadline and len(lines(log)) < lines_on_disk:
            time.sleep(0.05)
    finally:
        server.proc.kill()
        server.proc.wait()
    assert len(lines(log)) == lines_on_disk
    return log


def restart_and_stop(tmp, first, n, **settings):
    """A restart on the same log that serves requests `first`.. `first + n - 1` and stops cleanly."""
    server = Server(manifest(tmp, **settings))
    try:
        for i in range(first, first + n):
            r = requests.post(f"{server.url}/v2/models/simple/infer", json=body(i), timeout=10)
            assert r.status_code == 200, r.text
    finally:
        server.stop()
    assert server.proc.returncode == 0, "".join(server.log)
    return server


def shape(log):
    out = []
    for record in map(json.loads, lines(log)):
        cp = record.get("checkpoint")
        out.append(f"{cp['reason']}:{cp['records']}+{cp['unverified']}" if cp else record["request_id"])
    return out


def test_records_left_unsigned_by_an_unclean_stop_are_not_vouched_for(tmp_path):
    _, public, key_id = keygen(tmp_path)
    log = killed_after(tmp_path, 3, lines_on_disk=3, checkpoint_records=1000)
    assert shape(log) == ["req-0", "req-1", "req-2"]
    server = restart_and_stop(tmp_path, 3, 2, checkpoint_records=1000)
    assert any("does not end with a shutdown checkpoint" in line for line in server.log), "".join(server.log)
    # The restart closed the three records it found as unverified before writing its own.
    assert shape(log) == ["req-0", "req-1", "req-2", "recovered:0+3", "req-3", "req-4", "shutdown:2+0"]
    recovered = json.loads(lines(log)[3])
    assert list(recovered["checkpoint"]) == ["reason", "records", "unverified", "head", "key_id", "signature"]
    assert recovered["checkpoint"]["head"] == recovered["prev_hash"] == json.loads(lines(log)[2])["hash"]

    ok = verify(log, "--public-key", public)
    assert ok.returncode == 0, ok.stderr
    assert "OK: 5 record(s) and 2 checkpoint(s) intact" in ok.stdout
    assert f"signatures: 2 checkpoint(s) verified with key {key_id}" in ok.stdout
    assert (f"unclean stop: the server restarted after an unclean stop (recovered checkpoint {log}:4, "
            f"{recovered['timestamp']}); 3 record(s) written before it were left unsigned") in ok.stdout
    assert ("warning: 3 record(s) are not vouched for by a signature (the server stopped uncleanly before "
            f"signing them); recovered checkpoint(s): {log}:4 ({recovered['timestamp']})") in ok.stderr
    assert "2 record(s) are covered by signed checkpoints" in ok.stdout
    assert "all " not in ok.stdout
    assert ok.stdout.splitlines()[-1].endswith(") was written at shutdown")
    strict = verify(log, "--public-key", public, "--require-signed")
    assert strict.returncode == 1
    assert "error: 3 record(s) are not vouched for by a signature" in strict.stderr
    assert "(--require-signed)" in strict.stderr
    # The recovered checkpoint's counts changed to vouch for the records, the chain re-hashed: the
    # signature fails.
    def vouch(record):
        record["checkpoint"]["records"], record["checkpoint"]["unverified"] = 3, 0
    rewrite_from(log, 3, vouch)
    assert verify(log).returncode == 0
    forged = verify(log, "--public-key", public)
    assert forged.returncode == 1 and f"{log}:4: bad checkpoint signature" in forged.stderr


def test_a_tail_rewritten_after_an_unclean_stop_is_not_signed_by_the_restart(tmp_path):
    """The attack: write access to the log and a way to crash the server. Records after the last
    checkpoint are rewritten and the chain re-hashed while the server is down; the restarted
    server must not vouch for them."""
    _, public, _ = keygen(tmp_path)
    log = killed_after(tmp_path, 5, lines_on_disk=6, checkpoint_records=3)
    assert shape(log) == ["req-0", "req-1", "req-2", "records:3+0", "req-3", "req-4"]
    def forge(record):
        record["outputs"][0]["data"] = [0] * 16
    rewrite_from(log, 4, forge)
    assert json.loads(lines(log)[4])["outputs"][0]["data"] == [0] * 16
    assert verify(log).returncode == 0, "the chain was re-hashed"
    restart_and_stop(tmp_path, 5, 1, checkpoint_records=3)
    assert shape(log) == ["req-0", "req-1", "req-2", "records:3+0", "req-3", "req-4", "recovered:0+2",
                          "req-5", "shutdown:1+0"]
    ok = verify(log, "--public-key", public)
    assert ok.returncode == 0, ok.stderr
    assert "warning: 2 record(s) are not vouched for by a signature" in ok.stderr
    assert f"recovered checkpoint(s): {log}:7 (" in ok.stderr
    assert "4 record(s) are covered by signed checkpoints" in ok.stdout
    strict = verify(log, "--public-key", public, "--require-signed")
    assert strict.returncode == 1, strict.stdout
    assert "error: 2 record(s) are not vouched for by a signature" in strict.stderr
    # A second crash right after a checkpoint, then a clean restart: the stop is recorded, with
    # nothing unverified.
    killed_after(tmp_path, 3, first=6, lines_on_disk=13, checkpoint_records=3)
    restart_and_stop(tmp_path, 9, 0, checkpoint_records=3)
    assert shape(log)[9:] == ["req-6", "req-7", "req-8", "records:3+0", "recovered:0+0", "shutdown:0+0"]
    again = verify(log, "--public-key", public)
    assert again.returncode == 0
    assert f"unclean stop: the server restarted after an unclean stop (recovered checkpoint {log}:14, " in again.stdout
    assert "0 record(s) written before it were left unsigned" in again.stdout
    assert "warning: 2 record(s) are not vouched for" in again.stderr


def test_a_bad_or_missing_signing_key_fails_check_and_startup(tmp_path):
    _, public, _ = keygen(tmp_path)
    missing = manifest(tmp_path, signing_key="keys/nope.pem")
    for command in (["check", "--manifest", str(missing)],
                    ["serve", "--manifest", str(missing), "--http", "127.0.0.1:0"]):
        r = run_oxinfer(*command)
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"signing key {tmp_path / 'keys' / 'nope.pem'}: cannot read it" in r.stderr
    wrong = manifest(tmp_path, signing_key="keys/log.pub.pem")
    for command in (["check", "--manifest", str(wrong)],
                    ["serve", "--manifest", str(wrong), "--http", "127.0.0.1:0"]):
        r = run_oxinfer(*command)
        assert r.returncode == 1
        assert f"signing key {public}: not an Ed25519 private key in PKCS#8 PEM" in r.stderr
    zero = manifest(tmp_path, checkpoint_records=0)
    r = run_oxinfer("check", "--manifest", str(zero))
    assert r.returncode == 1 and "checkpoint_records and checkpoint_seconds must be at least 1" in r.stderr
    # --require-signed needs a key.
    assert run_oxinfer("audit", "verify", "--require-signed", str(tmp_path / "x")).returncode == 2


@pytest.mark.skipif(not openssl_ed25519(), reason="this openssl cannot make Ed25519 keys")
def test_openssl_keys_interoperate(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", keys / "log.pem"], check=True)
    subprocess.run(["openssl", "pkey", "-in", keys / "log.pem", "-pubout", "-out", keys / "log.pub.pem"], check=True)
    der = subprocess.run(["openssl", "pkey", "-pubin", "-in", keys / "log.pub.pem", "-outform", "DER"],
                         capture_output=True, check=True).stdout
    key_id = hashlib.sha256(der).hexdigest()[:16]
    log, _ = serve_requests(tmp_path, 3)
    ok = verify(log, "--public-key", keys / "log.pub.pem", "--require-signed")
    assert ok.returncode == 0, ok.stderr
    assert f"verified with key {key_id}" in ok.stdout
    # The signature checks with openssl alone, over the documented message.
    record = json.loads(lines(log)[-1])
    cp = record["checkpoint"]
    message = (f"oxinfer-inference-log-checkpoint/2 head={cp['head']} records={cp['records']} "
               f"unverified={cp['unverified']} key_id={cp['key_id']} timestamp={record['timestamp']} "
               f"reason={cp['reason']}")
    (tmp_path / "msg").write_text(message)
    (tmp_path / "sig").write_bytes(bytes.fromhex(cp["signature"]))
    r = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", keys / "log.pub.pem", "-rawin",
                        "-in", tmp_path / "msg", "-sigfile", tmp_path / "sig"], capture_output=True, text=True)
    assert r.returncode == 0 and "Signature Verified Successfully" in r.stdout, r.stdout + r.stderr
    # And the other way: openssl reads the keys keygen writes.
    private, public, _ = keygen(tmp_path, "made")
    derived = subprocess.run(["openssl", "pkey", "-in", private, "-pubout"], capture_output=True, text=True, check=True)
    assert derived.stdout == public.read_text()
