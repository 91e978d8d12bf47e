"""Signatures travel with banks through a moto S3 remote and the Hub double; `pull
--require-signed` checks them before anything is written, so a remote whose signature or
manifest was tampered with leaves the local store exactly as it was (empty)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from weightbank.registry.errors import WeightbankWarning

from helpers import Cli, key_id, make_lora, snapshot

Keys = dict[str, tuple[Path, Path]]
RemoteUnderTest = Any  # conftest.RemoteUnderTest


@pytest.fixture(params=["s3_remote", "hub_remote"])
def shared(request: pytest.FixtureRequest) -> RemoteUnderTest:
    """A fresh moto S3 bucket or Hub double repo."""
    return request.getfixturevalue(request.param)


def signature_paths(remote: RemoteUnderTest) -> list[str]:
    return sorted(path for path in remote.paths() if path.startswith("signatures/"))


def refused_and_nothing_local(store: Path, result, *expected: str) -> None:
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    for text in expected:
        assert text in result.stderr, (text, result.stderr)
    assert snapshot(store) == {}


def test_push_carries_signatures_and_pull_require_signed_accepts_them(
    shared: RemoteUnderTest, tiny_folders, keys: Keys, tmp_path: Path
) -> None:
    ours = Cli(tmp_path / "ours")
    base = tiny_folders("llama")
    ours("ingest", base, "--name", "tiny")
    ours("ingest", make_lora(base, tmp_path / "lora", r=4, lora_alpha=8, target_modules=["q_proj"]), "--name", "lora",
         "--base", "tiny")  # fmt: skip
    for ref in ("tiny", "lora"):
        ours("sign", ref, "--key", keys["alice"][0])
    pushed = json.loads(ours("push", shared.url, "tiny", "lora", "--json").stdout)
    assert pushed["signatures"] == 2 and len(signature_paths(shared)) == 2
    again = json.loads(ours("push", shared.url, "tiny", "lora", "--json").stdout)
    assert again["signatures"] == 0 and again["bytes"] == 0
    ours("sign", "tiny", "--key", keys["bob"][0])  # signed after the push: the next push carries it alone
    assert json.loads(ours("push", shared.url, "tiny", "--json").stdout)["signatures"] == 1

    theirs = Cli(tmp_path / "theirs")
    theirs("trust", "add", "alice", keys["alice"][1])  # the first command: it makes the store
    pulled = json.loads(theirs("pull", shared.url, "lora", "--require-signed", "--json").stdout)
    assert pulled["refs"] == ["lora@v1"] and pulled["signatures"] == 3
    base_digest = json.loads(ours("show", "tiny", "--json").stdout)["digest"]  # pulled as lora's parent, unnamed
    signers = json.loads(theirs("show", base_digest, "--json").stdout)["signatures"]
    assert sorted(s["key_id"] for s in signers) == sorted(key_id(keys[who][1]) for who in ("alice", "bob"))
    theirs("audit", "lora", "--require-signed")

    stranger = tmp_path / "stranger"
    result = Cli(stranger)("pull", shared.url, "lora", "--require-signed", "--trusted-key", keys["carol"][1], ok=False)
    refused_and_nothing_local(stranger, result, "lora@v1 (blake3:", "unknown key")


def _pushed(shared: RemoteUnderTest, tiny_folders, keys: Keys, tmp_path: Path) -> tuple[Cli, str]:
    ours = Cli(tmp_path / "ours")
    digest = json.loads(ours("ingest", tiny_folders("llama"), "--name", "tiny", "--json").stdout)["digest"]
    ours("sign", "tiny", "--key", keys["alice"][0])
    ours("push", shared.url, "tiny")
    return ours, digest


def test_a_tampered_remote_signature_is_refused_and_not_carried(
    shared: RemoteUnderTest, tiny_folders, keys: Keys, tmp_path: Path
) -> None:
    _, digest = _pushed(shared, tiny_folders, keys, tmp_path)
    (path,) = signature_paths(shared)
    shared.corrupt(path)
    store = tmp_path / "theirs"
    result = Cli(store)("pull", shared.url, "tiny", "--require-signed", "--trusted-key", keys["alice"][1], ok=False)
    refused_and_nothing_local(store, result, f"tiny@v1 ({digest[:19]}): bad signature")
    # Without the flag the bank comes, the damaged signature stays behind (with a warning).
    with pytest.warns(WeightbankWarning, match=f"signature blake3:.* of manifest {digest} not carried: it is not JSON"):
        Cli(store)("pull", shared.url, "tiny")
    assert json.loads(Cli(store)("show", "tiny", "--json").stdout)["signatures"] == []


def test_a_tampered_remote_manifest_is_refused(
    shared: RemoteUnderTest, tiny_folders, keys: Keys, tmp_path: Path
) -> None:
    _, digest = _pushed(shared, tiny_folders, keys, tmp_path)
    hex_digest = digest.removeprefix("blake3:")
    shared.corrupt(f"manifests/{hex_digest[:2]}/{hex_digest}")
    store = tmp_path / "theirs"
    result = Cli(store)("pull", shared.url, "tiny", "--require-signed", "--trusted-key", keys["alice"][1], ok=False)
    refused_and_nothing_local(store, result, f"manifest {digest} is corrupt")


def test_a_signature_copied_onto_another_manifest_is_refused(
    shared: RemoteUnderTest, tiny_folders, keys: Keys, tmp_path: Path
) -> None:
    """Someone with write access publishes tiny@v2 (another model) and copies alice's signature
    of v1 onto it: the signature names v1's manifest, so v2 is refused."""
    ours, first = _pushed(shared, tiny_folders, keys, tmp_path)
    second = json.loads(ours("ingest", tiny_folders("llama", seed=1), "--name", "tiny", "--json").stdout)["digest"]
    ours("push", shared.url, "tiny")
    (path,) = signature_paths(shared)
    second_hex = second.removeprefix("blake3:")
    shared.put(f"signatures/{second_hex[:2]}/{second_hex}.{path.rpartition('.')[2]}", shared.files()[path])
    store = tmp_path / "theirs"
    result = Cli(store)("pull", shared.url, "tiny", "--require-signed", "--trusted-key", keys["alice"][1], ok=False)
    refused_and_nothing_local(
        store, result, f"tiny@v2 ({second[:19]}): signed manifest ≠ this manifest", f"signs {first[:19]}"
    )
    assert (
        Cli(store)("pull", shared.url, "tiny@v1", "--require-signed", "--trusted-key", keys["alice"][1]).exit_code == 0
    )
