"""Hugging Face checkpoint folder conventions: file names, shard plans, the shard index."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import os
import re
import shutil
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from .errors import InputError
from .safetensors_format import TensorEntry, safetensors_order
from .temporaries import is_stale, token

MODEL_CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_CARD = "README.md"
BANK_MANIFEST = "weightbank.json"  # a published bank's manifest, beside its model card
# save_pretrained's default in transformers 5, if the installed transformers cannot be read.
SAVE_PRETRAINED_MAX_SHARD_SIZE = "50GB"
DEFAULT_METADATA = {"format": "pt"}
STAGING_MARK = ".wb-tmp-"
SOURCE_SHARDS = "source_shards"  # manifest metadata key: the ingested checkpoint's files and their tensors
_SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.safetensors")


@cache
def default_max_shard_size() -> int | str:
    """The `max_shard_size` default of the installed transformers' `save_pretrained` (50GB in
    transformers 5), read from its source: importing transformers would load torch."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or spec.origin is None:
        return SAVE_PRETRAINED_MAX_SHARD_SIZE
    source = Path(spec.origin).parent / "modeling_utils.py"
    try:
        tree = ast.parse(source.read_text("utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return SAVE_PRETRAINED_MAX_SHARD_SIZE
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "save_pretrained":
            arguments = node.args.args + node.args.kwonlyargs
            defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + list(node.args.defaults)
            defaults += list(node.args.kw_defaults)
            for argument, default in zip(arguments, defaults, strict=True):
                if (
                    argument.arg == "max_shard_size"
                    and isinstance(default, ast.Constant)
                    and isinstance(default.value, (int, str))
                ):
                    return default.value
    return SAVE_PRETRAINED_MAX_SHARD_SIZE


def natural_key(name: str) -> list[object]:
    """Sort key that puts layers.2 before layers.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def in_file_order(tensors: Mapping[str, str]) -> list[str]:
    """Tensor names (→ dtype) in the order safetensors' save_file lays them out in a file."""
    return sorted(tensors, key=lambda name: safetensors_order(name, tensors[name]))


def plan_shards(
    tensors: Mapping[str, tuple[str, int]], max_shard_size: int | str | None = None
) -> dict[str, list[str]]:
    """Shard file name → tensor names, for tensors given as name → (dtype, bytes), as
    save_pretrained would write them: huggingface_hub's splitter over the tensors in natural
    order (default size: save_pretrained's), each file laid out as safetensors does."""
    from huggingface_hub.serialization import split_state_dict_into_shards_factory

    ordered = {name: tensors[name][1] for name in sorted(tensors, key=natural_key)}
    split = split_state_dict_into_shards_factory(
        ordered, get_storage_size=lambda size: size, filename_pattern="model{suffix}.safetensors",
        max_shard_size=default_max_shard_size() if max_shard_size is None else max_shard_size,
    )  # fmt: skip
    return {
        filename: in_file_order({name: tensors[name][0] for name in names})
        for filename, names in split.filename_to_tensors.items()
    }


def source_layout(files: Mapping[str, Mapping[str, TensorEntry]]) -> dict[str, dict[str, list[str]]]:
    """Manifest metadata that records an ingested checkpoint's weight files, each with its
    tensors in file order, so that export can write the very same files (and the Hub finds
    the same blobs): `{"source_shards": {"model-00001-of-00002.safetensors": [...], ...}}`."""
    return {
        SOURCE_SHARDS: {
            filename: sorted(entries, key=lambda name: entries[name].begin) for filename, entries in files.items()
        }
    }


def recorded_layout(metadata: Mapping[str, object] | None, names: Collection[str]) -> dict[str, list[str]] | None:
    """The source checkpoint's shards recorded at ingest, if they hold exactly `names` in
    plain file names; else None (the bank did not come from a checkpoint, or was changed)."""
    shards = (metadata or {}).get(SOURCE_SHARDS)
    if not isinstance(shards, dict) or not all(
        isinstance(f, str) and _SHARD_NAME.fullmatch(f) and isinstance(n, list) for f, n in shards.items()
    ):
        return None
    listed = [name for tensors in shards.values() for name in tensors]
    if len(listed) != len(names) or set(listed) != set(names):
        return None
    return {filename: list(tensors) for filename, tensors in shards.items()}


def index_bytes(shards: Mapping[str, list[str]], total_size: int, parameters: int) -> bytes | None:
    """model.safetensors.index.json for more than one shard (None for one), as save_pretrained writes it."""
    if len(shards) < 2:
        return None
    index = {
        "metadata": {"total_parameters": parameters, "total_size": total_size},
        "weight_map": {name: filename for filename, names in shards.items() for name in names},
    }
    return (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()


def write_index(folder: Path, shards: Mapping[str, list[str]], total_size: int, parameters: int) -> str | None:
    """Write model.safetensors.index.json when there is more than one shard; its name, or None."""
    index = index_bytes(shards, total_size, parameters)
    if index is None:
        return None
    (folder / WEIGHTS_INDEX).write_bytes(index)
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
    """Yield a folder named like `out` inside a hidden sibling, renamed to `out` only if the
    block succeeds; on any error it is removed, so `out` is never seen half-written. (The
    folder has `out`'s own name so that what records it, such as a model signature's subject,
    names `out`.) Staging folders that a killed export left beside it are removed first (see
    `temporaries`)."""
    check_output_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out.parent)
    holder = out.parent / f".{out.name}{STAGING_MARK}{token()}"
    staging = holder / out.name
    staging.mkdir(parents=True)
    try:
        yield staging
        if out.exists():
            out.rmdir()
        os.rename(staging, out)
        holder.rmdir()
    except BaseException:
        shutil.rmtree(holder, ignore_errors=True)
        raise
