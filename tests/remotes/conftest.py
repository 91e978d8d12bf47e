"""Remotes on loopback: a moto S3 server and the Hub double (`tests/hub_server.py`), started once
per session, and a `remote` fixture that runs a test against a folder, S3 and the Hub.

Each remote also offers an independent view of what it holds (`files`) and a way to damage
it (`corrupt`), both through the storage itself (the folder, boto3, the double), never
through weightbank.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import s3fs
from hub_server import HubDouble
from moto.server import ThreadedMotoServer

from helpers import make_lora, snapshot

BUCKET_PREFIX = "banks"
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="session")
def lora_folder(tiny_folders: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`lora_folder(seed)` → a rank-64 PEFT LoRA on every projection of the tiny Llama, made once."""
    made: dict[int, Path] = {}

    def make(seed: int) -> Path:
        if seed not in made:
            out = tmp_path_factory.mktemp(f"lora-s{seed}")
            made[seed] = make_lora(tiny_folders("llama"), out, seed, r=64, lora_alpha=64, target_modules=PROJECTIONS)
        return made[seed]

    return make


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1, found by s3fs and boto3 through the standard AWS variables."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            env.delenv(name, raising=False)
        yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def hub() -> Iterator[HubDouble]:
    """The Hub double, found by huggingface_hub through HF_ENDPOINT, with a dummy token.

    The double speaks LFS, not Xet: HF_HUB_DISABLE_XET=1 for child processes, and the same
    setting in this one, where huggingface_hub read its environment when first imported."""
    import huggingface_hub.constants

    double = HubDouble(page_size=20).start()  # small pages: listings go through Link pagination
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_ENDPOINT", double.url)
        env.setenv("HF_TOKEN", "hf_dummy")
        env.setenv("HF_HUB_DISABLE_XET", "1")
        env.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
        yield double
    double.stop()


@pytest.fixture
def hub_loaders(hub: HubDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubDouble:
    """The double for loaders in this process (transformers' and PEFT's `from_pretrained`,
    `ModelCard.load`): huggingface_hub read HF_ENDPOINT and its cache folder when first imported,
    so both are set where it keeps them (a fresh cache per test)."""
    import huggingface_hub.constants as constants
    import huggingface_hub.hf_api

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", hub.url)  # behind `huggingface_hub.file_exists` & co
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return hub


@dataclass
class RemoteUnderTest:
    """A fresh, empty remote: its URL, and what it holds seen from the storage itself."""

    kind: str
    url: str
    where: Any  # the folder, the bucket name, or (double, repo id)

    def files(self) -> dict[str, bytes]:
        """Every file on the remote (store-relative path → bytes)."""
        if self.kind == "file":
            return snapshot(self.where)
        if self.kind == "s3":
            client = boto3.client("s3")
            return {path: client.get_object(Bucket=self.where, Key=f"{BUCKET_PREFIX}/{path}")["Body"].read()
                    for path in self.paths()}  # fmt: skip
        double, repo = self.where
        return {path: data for path, data in double.files(repo).items() if path != ".gitattributes"}

    def paths(self) -> set[str]:
        """The store-relative path of every file on the remote (S3: listed without reading them)."""
        if self.kind != "s3":
            return set(self.files())
        pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=self.where)
        return {item["Key"].removeprefix(BUCKET_PREFIX + "/") for page in pages for item in page.get("Contents", [])}

    def bytes_received(self) -> int | None:
        """Payload bytes that arrived over the wire so far, where the server counts them (the Hub double)."""
        if self.kind != "hub":
            return None
        double, _repo = self.where
        return double.lfs_bytes + double.regular_bytes

    def objects(self) -> set[str]:
        return {"blake3:" + path.rpartition("/")[2] for path in self.paths() if path.startswith("objects/")}

    def corrupt(self, path: str) -> None:
        """Flip the last byte of the file at `path` on the remote."""
        data = bytearray(self.files()[path])
        data[-1] ^= 0xFF
        if self.kind == "hub":
            double, repo = self.where
            double.corrupt(repo, path)
        else:
            self.put(path, bytes(data))

    def put(self, path: str, data: bytes) -> None:
        """Write a file at `path` on the remote, as someone with write access to it could."""
        if self.kind == "file":
            target = self.where / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target.chmod(0o644)
            target.write_bytes(data)
        elif self.kind == "s3":
            boto3.client("s3").put_object(Bucket=self.where, Key=f"{BUCKET_PREFIX}/{path}", Body=data)
        else:
            double, repo = self.where
            double.commit_files(repo, {path: data})


def new_remote(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> RemoteUnderTest:
    """A fresh, empty remote of `kind`: a folder, a new S3 bucket, or a new Hub repo."""
    name = f"wb-{uuid.uuid4().hex[:12]}"
    if kind == "file":
        return RemoteUnderTest("file", f"file://{tmp_path / 'remote'}", tmp_path / "remote")
    if kind == "s3":
        request.getfixturevalue("s3_endpoint")
        s3fs.S3FileSystem.clear_instance_cache()
        boto3.client("s3").create_bucket(Bucket=name)
        return RemoteUnderTest("s3", f"s3://{name}/{BUCKET_PREFIX}", name)
    double: HubDouble = request.getfixturevalue("hub")
    double.create_repo(f"team/{name}")
    return RemoteUnderTest("hub", f"hf://team/{name}", (double, f"team/{name}"))


@pytest.fixture(params=["file", "s3", "hub"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> RemoteUnderTest:
    """The same test against a folder, S3 and the Hub."""
    return new_remote(request.param, request, tmp_path)


@pytest.fixture
def s3_remote(request: pytest.FixtureRequest, tmp_path: Path) -> RemoteUnderTest:
    return new_remote("s3", request, tmp_path)


@pytest.fixture
def hub_remote(request: pytest.FixtureRequest, tmp_path: Path) -> RemoteUnderTest:
    return new_remote("hub", request, tmp_path)
