"""Writing a composition out: a Hugging Face folder on disk and/or a new bank in the store.

Tensors are produced one at a time (in shard order) and streamed into safetensors shards
whose headers are known from the plan; the whole model is never held in memory. Tensors
that pass through unchanged are copied object → file by the kernel, and re-used by digest
in the store. A registered result is a base bank whose provenance names the stored
composition manifest and every input bank.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from weightbank.registry.banks import FileRecord, Parent, TensorRecord, new_bank_manifest
from weightbank.registry.checkpoints import (
    DEFAULT_METADATA,
    MODEL_CONFIG,
    layout,
    plan_shards,
    staged_folder,
    write_index,
)
from weightbank.registry.export import write_files
from weightbank.registry.file_range import write_all
from weightbank.registry.names import check_ref_name
from weightbank.registry.progress import byte_progress
from weightbank.registry.provenance import new_activity
from weightbank.registry.safetensors_format import encode_header
from weightbank.registry.store import Store

from .executor import Executor
from .hf_model import config_object
from .plan import Plan, refuse_attachments
from .tasks import Load, Target


@dataclass(frozen=True)
class ComposeResult:
    """What a compose wrote: a folder, a registered bank, or both."""

    out_dir: Path | None
    name: str | None
    version: int | None
    digest: str | None
    composition: str | None
    tensors: int
    bytes: int
    new_objects: int


def _unchanged(target: Target) -> Load | None:
    """The stored tensor a target keeps as it is (its object's payload is copied, never computed)."""
    task = target.task
    return task if isinstance(task, Load) and task.dtype == target.dtype else None


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A CPU tensor's raw little-endian bytes, without a copy when it is contiguous."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy().data)


def write_composition(
    store: Store,
    plan: Plan,
    *,
    out_dir: str | Path | None = None,
    name: str | None = None,
    message: str = "",
    max_shard_size: int | str | None = None,
    show_progress: bool = False,
    action: str = "compose",
    exact_peft: bool = False,
) -> ComposeResult:
    """Stream the composed tensors to `out_dir` (a from_pretrained folder) and/or into the
    store as bank `name` (recorded with `action` in its ref history). `exact_peft`: see `Executor`."""
    if name is not None:
        check_ref_name(name)
    refuse_attachments(plan)
    executor = Executor(store, "cpu", exact_peft=exact_peft)
    config_bytes = config_object(plan.config).to_json_string(use_diff=True).encode("utf-8")
    shards = plan_shards({n: (t.dtype, t.nbytes) for n, t in plan.targets.items()}, max_shard_size)
    records: dict[str, TensorRecord] = {}
    created = 0
    total = sum(t.nbytes for t in plan.targets.values())
    computed = [plan.targets[n] for names in shards.values() for n in names if _unchanged(plan.targets[n]) is None]
    # Streaming holds about one tensor: objects are mapped ahead by one tensor's bytes at most,
    # and the computed tensors are dropped once written (buffers made ahead would not be).
    executor.prefetch(computed, ahead=max((t.nbytes for t in computed), default=0), fresh=False)
    with ExitStack() as stack:
        folder = stack.enter_context(staged_folder(Path(out_dir))) if out_dir is not None else None
        if name is not None:
            stack.enter_context(store.backend.batch())
        copier = stack.enter_context(ThreadPoolExecutor(1, "weightbank-copy"))
        advance = stack.enter_context(byte_progress(total, "compose", show_progress))
        for filename, names in shards.items():
            targets = {n: plan.targets[n] for n in names}
            out = stack.enter_context(open(folder / filename, "wb", buffering=0)) if folder else None
            if out is not None:
                entries = layout({n: (t.dtype, t.shape, t.nbytes) for n, t in targets.items()})
                out.write(encode_header(entries, DEFAULT_METADATA))
            for tensor_name, target in targets.items():
                stored = _unchanged(target)
                if stored is not None:
                    digest = stored.digest
                    if out is not None:
                        store.objects.copy_tensor_data(digest, out.fileno(), copier)
                else:
                    data = tensor_bytes(executor.compute(target))
                    if out is not None:
                        write_all(out.fileno(), data)
                    if name is not None:
                        put = store.objects.put_tensor(target.dtype, target.shape, data)
                        digest, created = put.digest, created + put.created
                if name is not None:
                    records[tensor_name] = TensorRecord(digest, target.dtype, target.shape, target.nbytes)
                advance(target.nbytes)
            if out is not None:
                out.close()
        if folder is not None:
            write_index(folder, shards, total, plan.parameters())
            write_files(store, plan.files, folder, lambda _n: None)
            (folder / MODEL_CONFIG).write_bytes(config_bytes)
        if name is not None:
            config_put = store.objects.put(config_bytes)
            created += config_put.created
            files = {**plan.files, MODEL_CONFIG: FileRecord(config_put.digest, len(config_bytes))}
    if name is None:
        return ComposeResult(Path(out_dir) if out_dir else None, None, None, None, None, len(plan.targets), total, 0)
    composition = store.manifests.put(plan.resolved_spec)
    manifest = new_bank_manifest(
        "base",
        tensors=records,
        files=files,
        parents=[Parent(composition, "composition"), *(Parent(d, role) for d, role in plan.inputs.items())],
        activity=new_activity(
            "compose", {"composition": composition, "dtype": plan.dtype, "steps": plan.resolved_spec["steps"]}, message
        ),
        config=plan.config,
        safetensors_metadata=DEFAULT_METADATA,
    )
    digest = store.manifests.put(manifest)
    entry = store.record(name, digest, action=action, message=message)
    return ComposeResult(
        Path(out_dir) if out_dir else None, name, entry.version, digest, composition, len(records), total, created
    )
