"""How the executor gets its inputs ready: objects mapped and verified from the mapping (once per
process, again after any change to the file), fresh buffers with their pages faulted in, both
made ahead of use by a `Lookahead` that never holds more than its budget."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from weightbank.composer import compose, object_maps, pages
from weightbank.composer.lookahead import Lookahead
from weightbank.composer.object_maps import map_verified
from weightbank.composer.pages import fresh_tensor
from weightbank.composer.row_blocks import for_row_blocks
from weightbank.registry import Registry
from weightbank.registry.errors import IntegrityError


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Registry, str, torch.Tensor, str]:
    """A store holding one 1 MiB bf16 weight: (registry, its object's digest, the tensor, its path)."""
    folder = tmp_path / "model"
    folder.mkdir()
    weight = torch.randn(512, 1024).bfloat16()
    save_file({"w": weight}, folder / "model.safetensors")
    (folder / "config.json").write_text("{}")
    registry = Registry(tmp_path / "store")
    registry.ingest(folder, "m")
    digest = registry.show("m")["tensors"]["w"]["digest"]
    path = registry.store.objects.local_path(digest)
    assert path is not None
    return registry, digest, weight, str(path)


class CountingHash:
    """Stands in for blake3 in object_maps, counting how often it hashes."""

    calls = 0

    def __init__(self, real: type) -> None:
        self.real = real

    def __call__(self, **kwargs: object) -> object:
        CountingHash.calls += 1
        return self.real(**kwargs)

    @property
    def AUTO(self) -> int:  # mirrors blake3.AUTO
        return self.real.AUTO


def test_an_object_is_hashed_once_per_process_and_again_after_any_change(stored, monkeypatch) -> None:
    _, digest, weight, path = stored
    monkeypatch.setattr(object_maps, "_hashed", set())
    monkeypatch.setattr(object_maps, "blake3", CountingHash(object_maps.blake3))
    CountingHash.calls = 0
    assert torch.equal(map_verified(path, digest), weight)
    assert torch.equal(map_verified(path, digest), weight)
    assert CountingHash.calls == 1  # the second mapping trusts the identity hashed before

    os.chmod(path, 0o644)
    hashed = os.stat(path)
    with open(path, "r+b") as file:  # one payload byte flipped in place: same size, same inode
        file.seek(os.path.getsize(path) - 3)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0x10]))
    os.utime(path, ns=(hashed.st_atime_ns, hashed.st_mtime_ns))  # mtime put back; the ctime cannot be
    with pytest.raises(IntegrityError, match=f"object {digest} is corrupt"):
        map_verified(path, digest)
    assert CountingHash.calls == 2


def test_a_mapped_tensor_is_copy_on_write(stored) -> None:
    registry, digest, weight, path = stored
    tensor = map_verified(path, digest)
    tensor.mul_(2)  # a model may change its weights in place
    assert torch.equal(tensor, weight * 2)
    registry.store.objects.verify(digest)  # the object on disk is untouched
    assert torch.equal(map_verified(path, digest), weight)


def test_compose_again_in_the_same_process_sees_an_object_damaged_since(tiny_folders, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "store")
    registry.ingest(tiny_folders("llama"), "tiny")
    first, _ = compose("tiny", store=registry.store)
    digest = registry.show("tiny")["tensors"]["model.norm.weight"]["digest"]
    path = registry.store.objects.local_path(digest)
    assert path is not None
    os.chmod(path, 0o644)
    with open(path, "r+b") as file:
        file.seek(-2, os.SEEK_END)
        file.write(b"\x00\x7f")
    with pytest.raises(IntegrityError, match=f"object {digest} is corrupt"):
        compose("tiny", store=registry.store)
    assert first.model.norm.weight.isfinite().all()


@pytest.mark.parametrize("populate", [True, False], ids=["madvise", "touch"])
def test_fresh_tensors_are_writable_buffers_of_the_asked_shape(populate: bool, monkeypatch) -> None:
    monkeypatch.setattr(pages, "_populate_works", populate and pages._populate_works)
    for shape, dtype in [((1000, 4099), torch.bfloat16), ((3,), torch.float32), ((0, 7), torch.float16)]:
        tensor = fresh_tensor(shape, dtype)
        assert tensor.shape == shape and tensor.dtype == dtype and tensor.is_contiguous()
        tensor.fill_(1.5)
        assert tensor.numel() == 0 or tensor.float().sum().item() == 1.5 * tensor.numel()


def test_lookahead_makes_values_ahead_in_order_within_its_budget() -> None:
    made: list[int] = []
    held_peak = 0

    def make(key: int) -> bytes:
        nonlocal held_peak
        held_peak = max(held_peak, lookahead._held)
        made.append(key)
        return bytes(key)

    lookahead: Lookahead[int, bytes] = Lookahead(make, 25, "test-lookahead")
    for key in (10, 10, 20, 5):
        lookahead.schedule(key, key)
    deadline = time.monotonic() + 5
    while len(made) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert made == [10, 10]  # the third (20 bytes) waits: 10 + 10 + 20 would pass the budget of 25
    assert [len(lookahead.take(key)) for key in (10, 10, 20, 5)] == [10, 10, 20, 5]
    assert sorted(made) == [5, 10, 10, 20] and held_peak <= 25
    assert lookahead.take(7) == bytes(7)  # never scheduled: made by the caller


def test_lookahead_take_raises_what_making_raised_and_makes_unstarted_values_itself() -> None:
    started = threading.Event()
    release = threading.Event()

    def make(key: str) -> str:
        if key == "slow":
            started.set()
            release.wait(5)
        if key == "bad":
            raise IntegrityError("object bad is corrupt")
        return key.upper()

    lookahead: Lookahead[str, str] = Lookahead(make, 1 << 20, "test-lookahead")
    for key in ("slow", "bad", "later"):
        lookahead.schedule(key, 1)
    assert started.wait(5)
    assert lookahead.take("later") == "LATER"  # still queued behind "slow": the caller makes it
    release.set()
    assert lookahead.take("slow") == "SLOW"
    with pytest.raises(IntegrityError, match="bad is corrupt"):
        lookahead.take("bad")


def test_row_blocks_are_shared_by_the_caller_and_the_workers_and_a_failure_reaches_the_caller() -> None:
    done: list[tuple[int, int, str]] = []
    lock = threading.Lock()

    def work(start: int, stop: int) -> None:
        time.sleep(0.002)  # long enough that no one thread takes every block
        with lock:
            done.append((start, stop, threading.current_thread().name))

    for_row_blocks(100, 7, work, torch.device("cpu"))
    assert sorted((start, stop) for start, stop, _ in done) == [(s, min(100, s + 7)) for s in range(0, 100, 7)]
    assert threading.current_thread().name in {name for _, _, name in done}  # the caller works too

    def failing(start: int, stop: int) -> None:
        if start == 21:
            raise IntegrityError("object x is corrupt")

    with pytest.raises(IntegrityError, match="x is corrupt"):
        for_row_blocks(100, 7, failing, torch.device("cpu"))
