"""Shared fixtures: tiny real models on disk, stores, and a CLI runner."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import transformers

from weightbank.composer.tiny_models import save_tiny_model

from helpers import Cli, write_key_pair

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`tiny_folders(family, seed=0, **config)` → a saved model folder, made once per session."""
    cache: dict[tuple, Path] = {}

    def make(family: str, seed: int = 0, max_shard_size: str = "5GB", **overrides: object) -> Path:
        key = (family, seed, max_shard_size, tuple(sorted(overrides.items())))
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"{family}-s{seed}")
            cache[key] = save_tiny_model(family, folder, seed, max_shard_size=max_shard_size, **overrides)
        return cache[key]

    return make


@pytest.fixture
def copy_folder(tmp_path: Path) -> Callable[[Path], Path]:
    """A writable copy of a folder, for tests that change or break it."""

    def copy(source: Path, name: str = "copy") -> Path:
        target = tmp_path / name
        shutil.copytree(source, target)
        return target

    return copy


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def wb(store_dir: Path) -> Cli:
    return Cli(store_dir)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Key pairs (private PEM, public PEM) for the signing tests: alice and bob (ECDSA P-256),
    carol (Ed25519), and kinds weightbank refuses: rsa, p384; `locked` is encrypted."""
    folder = tmp_path_factory.mktemp("keys")
    kinds = {"alice": "p256", "bob": "p256", "carol": "ed25519", "rsa": "rsa", "p384": "p384"}
    made = {name: write_key_pair(folder, name, kind) for name, kind in kinds.items()}
    made["locked"] = write_key_pair(folder, "locked", password=b"sesame")
    return made
