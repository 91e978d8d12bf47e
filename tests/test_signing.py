"""Signed banks through the CLI: `sign`, `trust`, `--require-signed` on audit, compose, verify
and export (accepted with a trusted key; refused — naming the bank, its digest and why — with
another key, unsigned, after a manifest or signature byte flip, for a moved signature and for
a composition whose adapter is unsigned), gc and fsck of signatures, and bad input."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from blake3 import blake3

from helpers import Cli, key_id, make_lora, snapshot

Keys = dict[str, tuple[Path, Path]]


def short_id(public: Path) -> str:
    return key_id(public)[: len("sha256:") + 12]


def signature_files(store: Path) -> dict[str, bytes]:
    return {path: data for path, data in snapshot(store).items() if path.startswith("signatures/")}


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def one_error_line(result, *expected: str) -> str:
    """The single `error: …` line of a refused command, checked to mention everything expected."""
    assert result.exit_code == 1, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    for text in expected:
        assert text in result.stderr, (text, result.stderr)
    return result.stderr


def test_sign_stores_a_signature_of_its_own_and_show_log_audit_list_who_signed(
    tiny_folders, wb: Cli, store_dir: Path, keys: Keys
) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "tiny")
    (alice, alice_pub), (carol, carol_pub) = keys["alice"], keys["carol"]
    signed = json.loads(wb("sign", "tiny@v1", "--key", alice, "--json").stdout)
    assert signed["created"] and signed["key_id"] == key_id(alice_pub)

    # One create-only file per signature, named by the manifest and by its own BLAKE3.
    ((path, data),) = signature_files(store_dir).items()
    manifest_hex, signature_hex = (
        signed["manifest"].removeprefix("blake3:"),
        signed["signature"].removeprefix("blake3:"),
    )
    assert path == f"signatures/{manifest_hex[:2]}/{manifest_hex}.{signature_hex}"
    assert blake3(data).hexdigest() == signature_hex
    document = json.loads(data)
    assert (document["manifest"], document["key_id"], document["algorithm"]) == (
        signed["manifest"], key_id(alice_pub), "ecdsa-p256-sha256"
    )  # fmt: skip
    assert document["public_key"] == alice_pub.read_text()

    before = snapshot(store_dir)
    assert "is already signed by" in wb("sign", "tiny", "--key", alice).stdout
    assert snapshot(store_dir) == before
    wb("sign", "tiny", "--key", carol)  # a second signer (Ed25519) on the same manifest
    shown = json.loads(wb("show", "tiny", "--json").stdout)["signatures"]
    assert sorted(s["key_id"] for s in shown) == sorted([key_id(alice_pub), key_id(carol_pub)])
    assert all(s["status"] == "valid" and s["signs"] == signed["manifest"] for s in shown)

    assert "trusting " + key_id(alice_pub) in wb("trust", "add", "alice", alice_pub).stdout
    text = wb("show", "tiny").stdout
    assert f"signed by   {short_id(alice_pub)} alice (trusted)" in text
    assert f"signed by   {short_id(carol_pub)} (unknown key)" in text
    (row,) = wb("log", "tiny").stdout.splitlines()
    assert sorted(row.partition("signed: ")[2].split(", ")) == ["alice", short_id(carol_pub)]
    (entry,) = json.loads(wb("log", "tiny", "--json").stdout)
    assert {s["trusted_as"] for s in entry["signatures"]} == {"alice", None}
    assert "2 signatures verified" in wb("audit", "tiny", "--require-signed").stdout
    listed = json.loads(wb("trust", "ls", "--json").stdout)
    assert [(k["name"], k["key_id"]) for k in listed] == [("alice", key_id(alice_pub))]
    assert json.loads((store_dir / "trust.json").read_text())["keys"]["alice"]["key_id"] == key_id(alice_pub)
    wb("trust", "rm", "alice")
    assert wb("trust", "ls", "--json").stdout.strip() == "[]"


def _sign_with_bob(wb: Cli, store: Path, keys: Keys, digest: str) -> None:
    wb("sign", "tiny", "--key", keys["bob"][0])


def _unsigned(wb: Cli, store: Path, keys: Keys, digest: str) -> None:
    pass


def _flip_manifest_byte(wb: Cli, store: Path, keys: Keys, digest: str) -> None:
    wb("sign", "tiny", "--key", keys["alice"][0])
    hex_digest = digest.removeprefix("blake3:")
    flip_last_byte(store / "manifests" / hex_digest[:2] / hex_digest)


def _flip_signature_byte(wb: Cli, store: Path, keys: Keys, digest: str) -> None:
    wb("sign", "tiny", "--key", keys["alice"][0])
    (path,) = signature_files(store)
    flip_last_byte(store / path)


def _forge_signature(wb: Cli, store: Path, keys: Keys, digest: str) -> None:
    """An attacker's edit that keeps the file well formed and named by its digest: the
    signature value changes, so only the cryptography can tell."""
    wb("sign", "tiny", "--key", keys["alice"][0])
    (path,) = signature_files(store)
    document = json.loads((store / path).read_bytes())
    value = bytearray(base64.b64decode(document["signature"]))
    value[-1] ^= 0x01
    document["signature"] = base64.b64encode(bytes(value)).decode()
    data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    (store / path).unlink()
    (store / path).with_name(f"{path.rpartition('/')[2].partition('.')[0]}.{blake3(data).hexdigest()}").write_bytes(
        data
    )


DAMAGES: list[tuple[Callable[[Cli, Path, Keys, str], None], str]] = [
    (_sign_with_bob, "unknown key (signed only by sha256:"),
    (_unsigned, "unsigned"),
    (_flip_manifest_byte, "is corrupt"),
    (_flip_signature_byte, "bad signature (signature blake3:"),
    (_forge_signature, "bad signature (alice: the signature does not verify with its key)"),
]


@pytest.mark.parametrize(("damage", "reason"), DAMAGES, ids=[d.__name__.strip("_") for d, _ in DAMAGES])
def test_require_signed_refuses_naming_bank_digest_and_reason(
    damage, reason: str, tiny_folders, wb: Cli, store_dir: Path, keys: Keys, tmp_path: Path
) -> None:
    digest = json.loads(wb("ingest", tiny_folders("llama"), "--name", "tiny", "--json").stdout)["digest"]
    wb("trust", "add", "alice", keys["alice"][1])
    damage(wb, store_dir, keys, digest)
    before = snapshot(store_dir)

    audit = wb("audit", "tiny", "--require-signed", ok=False)
    assert audit.exit_code == 1 and f"BAD manifest {digest} (tiny@v1)" in audit.stdout and reason in audit.stdout
    compose = wb("compose", "tiny", "--require-signed", "--out", tmp_path / "out", ok=False)
    export = wb("export", "tiny", tmp_path / "out", "--require-signed", ok=False)
    for refused in (compose, export):
        one_error_line(refused, digest[:19], reason)
        if damage is not _flip_manifest_byte:  # a corrupt manifest is refused before any policy: by its digest
            assert "tiny@v1 (" + digest[:19] + "): " + reason in refused.stderr
    assert not (tmp_path / "out").exists() and snapshot(store_dir) == before


def test_a_signature_moved_onto_another_manifest_is_refused(
    tiny_folders, wb: Cli, store_dir: Path, keys: Keys, tmp_path: Path
) -> None:
    first = json.loads(wb("ingest", tiny_folders("llama"), "--name", "tiny", "--json").stdout)["digest"]
    wb("sign", "tiny", "--key", keys["alice"][0])
    second = json.loads(wb("ingest", tiny_folders("llama", seed=1), "--name", "tiny", "--json").stdout)["digest"]
    ((path, data),) = signature_files(store_dir).items()
    second_hex, signature_hex = second.removeprefix("blake3:"), path.rpartition(".")[2]
    moved = store_dir / f"signatures/{second_hex[:2]}/{second_hex}.{signature_hex}"
    moved.parent.mkdir(parents=True, exist_ok=True)
    moved.write_bytes(data)
    result = wb("audit", "tiny", "--require-signed", "--trusted-key", keys["alice"][1], ok=False)
    assert f"BAD manifest {second} (tiny@v2)" in result.stdout
    assert f"signed manifest ≠ this manifest (the signature by alice.pub.pem signs {first[:19]})" in result.stdout
    assert "BAD signature" in result.stdout  # audit without a policy reports the misplaced signature too
    assert wb("audit", "tiny@v1", "--require-signed", "--trusted-key", keys["alice"][1]).exit_code == 0


def test_a_composition_is_accepted_only_when_every_bank_it_reads_is_signed(
    tiny_folders, wb: Cli, store_dir: Path, keys: Keys, tmp_path: Path
) -> None:
    base = tiny_folders("llama")
    lora = make_lora(base, tmp_path / "lora", seed=3, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    wb("ingest", base, "--name", "tiny")
    lora_digest = json.loads(wb("ingest", lora, "--name", "lora", "--base", "tiny", "--json").stdout)["digest"]
    alice = keys["alice"][0]
    wb("sign", "tiny", "--key", alice)
    wb("trust", "add", "alice", keys["alice"][1])
    spec = tmp_path / "merge.yaml"
    spec.write_text("mes_version: '1'\nbase: tiny\nsteps:\n  - {op: adapter.lora, bank: lora}\n")
    before = snapshot(store_dir)
    refused = [
        wb("compose", spec, "--out", tmp_path / "merged", "--require-signed", ok=False),
        wb("verify", spec, "--require-signed", ok=False),
        wb("export", "lora", tmp_path / "adapter", "--require-signed", ok=False),
    ]
    for result in refused:
        one_error_line(result, f"lora@v1 ({lora_digest[:19]}): unsigned")
    assert snapshot(store_dir) == before and not (tmp_path / "merged").exists()

    wb("sign", "lora", "--key", alice)
    wb("compose", spec, "--out", tmp_path / "merged", "--name", "merged", "--require-signed")
    assert (tmp_path / "merged" / "config.json").is_file()
    assert wb("verify", spec, "--require-signed").stdout.startswith("ok: ")
    # A derived bank: its own signature and every input's.
    one_error_line(wb("export", "merged", tmp_path / "m", "--require-signed", ok=False), "merged@v1 (", "unsigned")
    wb("sign", "merged", "--key", alice)
    wb("export", "merged", tmp_path / "m", "--require-signed")
    # The stored composition (the recipe): covered by merged's signature, signable on its own.
    parents = json.loads(wb("show", "merged", "--json").stdout)["manifest"]["provenance"]["parents"]
    (recipe,) = [parent["digest"] for parent in parents if parent["role"] == "composition"]
    refused = wb("audit", recipe, "--require-signed", ok=False).stdout
    assert f"BAD manifest {recipe}: not accepted by the trust policy: unsigned" in refused
    wb("sign", recipe, "--key", alice)
    assert "composition" in wb("show", recipe).stdout.splitlines()[0]
    assert wb("audit", recipe, "--require-signed").stdout.startswith(f"ok: {recipe} — 1 manifests")
    # An adapter whose base is unsigned is refused, the base named.
    wb("ingest", tiny_folders("llama", seed=1), "--name", "tiny2")
    wb("ingest", lora, "--name", "lora2", "--base", "tiny2")
    wb("sign", "lora2", "--key", alice)
    one_error_line(wb("export", "lora2", tmp_path / "a2", "--require-signed", ok=False), "tiny2@v1 (", "unsigned")
    audit = wb("audit", "lora2", "--require-signed", ok=False).stdout
    assert "(tiny2@v1): not accepted by the trust policy: unsigned" in audit


def test_without_the_flag_nothing_changes_for_unsigned_banks(tiny_folders, wb: Cli, tmp_path: Path) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "tiny")
    assert wb("audit", "tiny").stdout.startswith("ok: tiny — ")
    wb("export", "tiny", tmp_path / "out")
    wb("compose", "tiny", "--dry-run")
    assert "signed" not in wb("show", "tiny").stdout


def test_gc_keeps_the_signatures_of_what_it_keeps_and_removes_the_rest(
    tiny_folders, wb: Cli, store_dir: Path, keys: Keys
) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "keep")
    wb("ingest", tiny_folders("llama", seed=1), "--name", "gone")
    for ref in ("keep", "gone"):
        wb("sign", ref, "--key", keys["alice"][0])
    wb("sign", "gone", "--key", keys["bob"][0])
    keep, gone = (
        json.loads(wb("show", ref, "--json").stdout)["digest"].removeprefix("blake3:") for ref in ("keep", "gone")
    )
    orphan = store_dir / f"signatures/00/{'0' * 64}.{'1' * 64}"  # attached to a manifest that is not there
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"{}")
    assert "gc removes it" in wb("fsck").stderr
    wb("rm", "gone")
    dry = json.loads(wb("gc", "--grace", "0", "--dry-run", "--json").stdout)
    report = json.loads(wb("gc", "--grace", "0", "--json").stdout)
    assert sorted(report["signatures"]) == sorted(dry["signatures"]) and len(report["signatures"]) == 3
    assert gone in report["manifests"][0]
    left = signature_files(store_dir)
    assert len(left) == 1 and all(path.startswith(f"signatures/{keep[:2]}/{keep}.") for path in left)
    assert wb("fsck").stdout.startswith("ok: store") and "1 signature verified" in wb("audit", "keep").stdout


def test_fsck_names_a_damaged_signature_and_its_bank(tiny_folders, wb: Cli, store_dir: Path, keys: Keys) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "tiny")
    wb("sign", "tiny", "--key", keys["alice"][0])
    (path,) = signature_files(store_dir)
    flip_last_byte(store_dir / path)
    result = wb("fsck", ok=False)
    assert result.exit_code == 1
    assert "BAD signature blake3:" in result.stdout and "(tiny@v1): it is not JSON" in result.stdout


def _with_tokenizer(folder: Path) -> Path:
    """A real (tiny) fast tokenizer saved beside the model, as a Hub folder has one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(folder)
    return folder


def _verify_with_model_signing(folder: Path, public_key: Path) -> None:
    """OpenSSF model-signing's own verifier (Python API); raises if it rejects the folder."""
    import model_signing

    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key).verify(
        folder, folder / "model.sig"
    )


def _change_tensor_byte(folder: Path) -> None:
    flip_last_byte(folder / "model.safetensors")


def _change_tokenizer(folder: Path) -> None:
    path = folder / "tokenizer.json"
    path.write_text(path.read_text().replace('"hello"', '"hallo"'))


def _add_file(folder: Path) -> None:
    (folder / "notes.txt").write_text("not signed")


def _remove_file(folder: Path) -> None:
    (folder / "tokenizer_config.json").unlink()


CHANGES = [(_change_tensor_byte, "changed: model.safetensors"), (_change_tokenizer, "changed: tokenizer.json"),
           (_add_file, "added: notes.txt"), (_remove_file, "removed: tokenizer_config.json")]  # fmt: skip


def test_export_sign_writes_a_model_sig_that_openssf_model_signing_verifies(
    tiny_folders, copy_folder, wb: Cli, keys: Keys, tmp_path: Path
) -> None:
    import subprocess
    import sys

    alice, alice_pub = keys["alice"]
    wb("ingest", _with_tokenizer(copy_folder(tiny_folders("llama"))), "--name", "tiny")
    out = tmp_path / "signed"
    assert f"model.sig signed by {short_id(alice_pub)}" in wb("export", "tiny", out, "--sign", alice).stdout
    assert json.loads((out / "model.sig").read_text())["verificationMaterial"]["publicKey"]["hint"] == key_id(
        alice_pub
    ).removeprefix("sha256:")  # one key id everywhere: model-signing's hint is ours
    statement = json.loads(base64.b64decode(json.loads((out / "model.sig").read_text())["dsseEnvelope"]["payload"]))
    assert statement["subject"][0]["name"] == "signed"  # the folder's own name, not its staging name
    assert {r["name"] for r in statement["predicate"]["resources"]} == {
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"
    }  # fmt: skip
    _verify_with_model_signing(out, alice_pub)
    cli = [sys.executable, "-m", "model_signing", "verify", "key", "--signature", str(out / "model.sig")]
    accepted = subprocess.run([*cli, "--public_key", str(alice_pub), str(out)], capture_output=True, text=True)
    assert accepted.returncode == 0 and "Verification succeeded" in accepted.stdout, accepted.stderr
    with pytest.raises(ValueError, match="Key mismatch"):
        _verify_with_model_signing(out, keys["bob"][1])
    for change, _ in CHANGES:
        changed = tmp_path / change.__name__
        shutil.copytree(out, changed)
        change(changed)
        with pytest.raises(ValueError, match="Signature mismatch"):
            _verify_with_model_signing(changed, alice_pub)
    rejected = subprocess.run([*cli, "--public_key", str(alice_pub), str(tmp_path / "_add_file")], capture_output=True)
    assert rejected.returncode == 1


def test_ingest_require_signed_verifies_model_sig_and_records_the_signer(
    tiny_folders, copy_folder, wb: Cli, store_dir: Path, keys: Keys, tmp_path: Path
) -> None:
    alice, alice_pub = keys["alice"]
    wb("ingest", _with_tokenizer(copy_folder(tiny_folders("llama"))), "--name", "tiny")
    out = tmp_path / "signed"
    wb("export", "tiny", out, "--sign", alice)
    wb("trust", "add", "alice", alice_pub)
    for change, what in CHANGES:
        changed = tmp_path / change.__name__
        shutil.copytree(out, changed)
        change(changed)
        before = snapshot(store_dir)
        one_error_line(wb("ingest", changed, "--name", "copy", "--require-signed", ok=False), "bad signature", what)
        assert snapshot(store_dir) == before
    one_error_line(wb("ingest", tiny_folders("llama"), "--name", "copy", "--require-signed", ok=False), "no model.sig")
    result = json.loads(wb("ingest", out, "--name", "copy", "--require-signed", "--json").stdout)
    assert result["skipped"] == ["model.sig (the folder's signature; --require-signed checks it)"]
    manifest = json.loads(wb("show", "copy", "--json").stdout)["manifest"]
    assert manifest["provenance"]["activity"]["parameters"]["signature"] == {
        "format": "openssf-model-signing", "key_id": key_id(alice_pub), "trusted_as": "alice"
    }  # fmt: skip
    assert "model.sig" not in manifest["files"]


def test_a_folder_signed_by_an_untrusted_key_is_refused(
    tiny_folders, wb: Cli, store_dir: Path, keys: Keys, tmp_path: Path
) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "tiny")
    wb("export", "tiny", tmp_path / "out", "--sign", keys["bob"][0])
    before = snapshot(store_dir)
    refused = wb(
        "ingest", tmp_path / "out", "--name", "x", "--require-signed", "--trusted-key", keys["alice"][1], ok=False
    )
    one_error_line(refused, "unknown key", short_id(keys["alice"][1]))
    assert snapshot(store_dir) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sign", "tiny", "--key", "{dir}/missing.pem"], "missing.pem: no such key file"),
        (["sign", "tiny", "--key", "{alice_pub}"], "alice.pub.pem is a public key; signing needs the private key"),
        (["sign", "tiny", "--key", "{rsa}"], "rsa.pem holds an RSA key (2048 bits); weightbank signs with ECDSA P-256"),
        (["sign", "tiny", "--key", "{p384}"], "p384.pem holds an ECDSA secp384r1 key"),
        (["sign", "tiny", "--key", "{locked}"], "the private key is encrypted; set WEIGHTBANK_KEY_PASSWORD"),
        (["sign", "tiny", "--key", "{dir}"], "a folder, not a key file"),
        (["sign", "nobody", "--key", "{alice}"], "no ref named 'nobody'"),
        (["trust", "add", "x", "{dir}/missing.pem"], "missing.pem: no such key file"),
        (["trust", "add", "x", "{alice}"], "alice.pem is a private key; give its public key"),
        (["trust", "add", "x", "{rsa_pub}"], "holds an RSA key (2048 bits); weightbank verifies ECDSA P-256"),
        (["trust", "add", "../x", "{alice_pub}"], "invalid trusted key name '../x'"),
        (["trust", "add", "bob", "{bob_pub}"], "a key named 'bob' is already trusted"),
        (["trust", "add", "other", "{bob_pub}"], "this key is already trusted as 'bob'"),
        (["trust", "rm", "nobody"], "no trusted key named 'nobody'"),
        (["audit", "tiny", "--trusted-key", "{alice_pub}"], "--trusted-key goes with --require-signed"),
        (["audit", "tiny", "--require-signed", "--trusted-key", "{dir}/missing.pem"], "no such key file"),
        (["compose", "tiny", "--dry-run", "--require-signed"], "tiny@v1 (blake3:"),
        (["verify", "tiny", "--require-signed"], "tiny@v1 (blake3:"),
        (["export", "tiny", "{dir}/out", "--require-signed"], "unsigned"),
        (["export", "tiny", "{dir}/out", "--sign", "{carol}"], "carol.pem is an Ed25519 key; model.sig is made by"),
        (["export", "tiny", "{dir}/out", "--sign", "{bob_pub}"], "bob.pub.pem is a public key"),
        (["ingest", "{dir}", "--name", "x", "--require-signed"], "no model.sig"),
        (["ingest", "{dir}", "--as-version-of", "tiny", "--require-signed"], "does not go with --as-version-of"),
    ],
)
def test_bad_input_to_signing_is_one_line_and_writes_nothing(
    args: list[str], message: str, tiny_folders, wb: Cli, store_dir: Path, keys: Keys, tmp_path: Path
) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "tiny")
    wb("trust", "add", "bob", keys["bob"][1])
    paths = {"dir": tmp_path, **{name: private for name, (private, _) in keys.items()}}
    paths |= {f"{name}_pub": public for name, (_, public) in keys.items()}
    before = snapshot(store_dir)
    result = wb(*[arg.format(**paths) if "{" in arg else arg for arg in args], ok=False)
    one_error_line(result, message)
    assert snapshot(store_dir) == before and not (tmp_path / "out").exists()
