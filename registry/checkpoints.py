"""Hugging Face checkpoint folder conventions: file names, shard plans, the shard index."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError
from .safetensors_format import TensorEntry
from .temporaries import is_stale, token

MODEL_CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DEFAULT_MAX_SHARD_SIZE = "5GB"
DEFAULT_METADATA = {"format": "pt"}
STAGING_MARK = ".wb-tmp-"


def natural_key(name: str) -> list[object]:
    """Sort key that puts layers.2 before layers.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def plan_shards(sizes: Mapping[str, int], max_shard_size: int | str) -> dict[str, list[str]]:
    """Shard file name → tensor names, as transformers' save_pretrained would split them
    (huggingface_hub's splitter; tensors in natural order)."""
    from huggingface_hub.serialization import split_state_dict_into_shards_factory

    ordered = {name: sizes[name] for name in sorted(sizes, key=natural_key)}
    split = split_state_dict_into_shards_factory(
        ordered, get_storage_size=lambda size: size, filename_pattern="model{suffix}.safetensors",
        max_shard_size=max_shard_size,
    )  # fmt: skip
    return {filename: list(names) for filename, names in split.filename_to_tensors.items()}


def write_index(folder: Path, shards: Mapping[str, list[str]], total_size: int, parameters: int) -> str | None:
    """Write model.safetensors.index.json when there is more than one shard; its name, or None."""
    if len(shards) < 2:
        return None
    index = {
        "metadata": {"total_parameters": parameters, "total_size": total_size},
        "weight_map": {name: filename for filename, names in shards.items() for name in names},
    }
    (folder / WEIGHTS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return WEIGHTS_INDEX


def layout(tensors: Mapping[str, tuple[str, tuple[int, ...], int]]) -> dict[str, TensorEntry]:
    """Consecutive data offsets for (dtype, shape, bytes) in the given order."""
    entries: dict[str, TensorEntry] = {}
    offset = 0
    for name, (dtype, shape, nbytes) in tensors.items():
        entries[name] = TensorEntry(dtype, tuple(shape), offset, offset + nbytes)
        offset += nbytes
    return entries


def remove_stale_staging(folder: Path) -> list[Path]:
    """Remove staging folders in `folder` whose export or compose was killed; return them."""
    removed = []
    for entry in folder.iterdir():
        if entry.name.startswith(".") and STAGING_MARK in entry.name and entry.is_dir():
            with contextlib.suppress(FileNotFoundError):
                if is_stale(entry.name, entry.stat().st_mtime):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
    return removed


def check_output_folder(out: Path) -> None:
    """An output folder must not exist yet, or be empty: nothing of the user's is overwritten."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: already exists and is not an empty folder")


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield a hidden sibling folder that is renamed to `out` only if the block succeeds;
    on any error it is removed, so `out` is never seen half-written. Staging folders that a
    killed export left beside it are removed first (see `temporaries`)."""
    check_output_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out.parent)
    staging = out.parent / f".{out.name}{STAGING_MARK}{token()}"
    staging.mkdir()
    try:
        yield staging
        if out.exists():
            out.rmdir()
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
