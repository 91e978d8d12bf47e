"""A mergekit YAML in: its models resolved (store refs, or local folders ingested on the fly), the
equivalent MES composition planned — all checks done before anything is written.

Each `model:` is tried as a local Hugging Face folder first (a path that exists, relative to the
working directory as mergekit has it), then as a store ref (`name`, `name@v3`, `blake3:…`);
anything else (a Hub id, a typo) is refused. A folder is ingested as `weightbank ingest DIR
--name NAME` would, NAME being the folder's name (`./out/my-ft` → `my-ft`; `my-ft-2` for a second
folder of that name in the same config): an unchanged folder maps to its existing version and
costs nothing, a changed one becomes the next version, a folder named twice is ingested once,
and identical tensors are stored once. Before the first
byte is written the whole merge is planned against the folders as they are (their headers and
configs), so a refused merge leaves the store as it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightbank.registry.banks import Bank
from weightbank.registry.digest import digest_bytes
from weightbank.registry.errors import InputError, WeightbankError
from weightbank.registry.ingest import FolderScan, ingest_folder, scan_folder
from weightbank.registry.store import Store

from . import mergekit_config
from .plan import Plan, make_plan
from .spec import SPEC_SUFFIXES, read_spec_text

VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json")
PENDING = "pending:"


@dataclass
class Imported:
    """A mergekit config made into a composition."""

    composition: dict[str, Any]
    ingested: list[tuple[str, str, bool]] = field(default_factory=list)  # (folder, ref, new version?)
    pending: list[tuple[str, str]] = field(default_factory=list)  # (folder, ref) not ingested (ingest=False)
    preview: Plan | None = None  # the plan checked against the folders before ingesting them


def read_mergekit(source: str | Path | dict[str, Any]) -> dict[str, Any] | None:
    """The document if `source` is a mergekit config (a mapping with `merge_method`, or a
    .yml/.yaml/.json file holding one), else None."""
    if isinstance(source, dict):
        return source if "merge_method" in source else None
    file = Path(source)
    if file.suffix not in SPEC_SUFFIXES or not file.is_file():
        return None
    document = read_spec_text(file.read_text("utf-8"), str(file), json_only=file.suffix == ".json")
    return document if "merge_method" in document else None


def import_mergekit(
    document: dict[str, Any],
    origin: str,
    store: Store,
    *,
    ingest: bool = True,
    folders: bool = True,
    show_progress: bool = False,
) -> Imported:
    """The composition of a mergekit config (`origin`: where it was read, for messages), its
    folders ingested (unless `ingest` is false; refused when `folders` is false, as where only
    signed banks may be read). When there are folders, the merge is planned against them first:
    a refusal writes nothing."""
    config = mergekit_config.parse(document, origin)
    found, refs = _resolve_models(config, store)
    if found and not folders:
        names = ", ".join(scan.source.label for _, scan in found.values())
        raise InputError(f"{origin}: {names}: a folder is not a signed bank; ingest, sign and name it by its ref")
    _check_tokenizers(config, refs, found, store)
    composition = mergekit_config.to_composition(config, lambda m: refs[m], origin)
    if not found:
        return Imported(composition)
    preview = make_plan(_WithFolders(store, {name: _folder_bank(scan) for name, scan in found.values()}), composition)
    if not ingest:
        pending = [(scan.source.label, name) for name, scan in found.values()]
        return Imported(composition, pending=pending, preview=preview)
    ingested: dict[str, tuple[str, str, bool]] = {}
    for model, (name, scan) in found.items():
        if name not in ingested:
            folder = scan.source.label
            result = ingest_folder(store, folder, name, message=f"input of {origin}", show_progress=show_progress)
            ingested[name] = (folder, f"{result.name}@v{result.version}", not result.unchanged)
        refs[model] = ingested[name][1]
    composition = mergekit_config.to_composition(config, lambda m: refs[m], origin)
    return Imported(composition, list(ingested.values()), preview=preview)


def _resolve_models(
    config: mergekit_config.MergekitConfig, store: Store
) -> tuple[dict[str, tuple[str, FolderScan]], dict[str, str]]:
    """(folders to ingest: model string → (ref name, scan), model string → ref)."""
    folders: dict[str, tuple[str, FolderScan]] = {}
    refs: dict[str, str] = {}
    names: dict[Path, str] = {}
    problems = []
    for model in dict.fromkeys(config.model_strings()):
        folder = Path(model).expanduser()
        if folder.is_dir():
            try:
                scan = scan_folder(folder)
            except InputError as exc:
                problems.append(f"model {model}: {exc}")
                continue
            if scan.kind != "base":
                problems.append(f"model {model} is a PEFT adapter folder; merge inputs are models")
                continue
            resolved = folder.resolve()
            if resolved not in names:
                names[resolved] = _name_for(resolved, set(names.values()))
            folders[model] = (names[resolved], scan)
            refs[model] = names[resolved]
            continue
        try:
            store.resolve(model)
            refs[model] = model
        except WeightbankError:
            problems.append(
                f"model {model}: not a local folder and not in the store (weightbank does not download: "
                "give a model folder, or a ref of an ingested model)"
            )
    if problems:
        raise InputError("; ".join(problems))
    return folders, refs


def _name_for(folder: Path, taken: set[str]) -> str:
    """The ref a folder is ingested under: its name, made a valid ref name (with -2, -3, … when
    another folder of this config has the same name)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.name).strip("-._")[:120] or "model"
    return next(name for n in range(1, len(taken) + 2) if (name := stem if n == 1 else f"{stem}-{n}") not in taken)


def _folder_bank(scan: FolderScan) -> Bank:
    """A stand-in bank for a folder not ingested yet: its config, tensor names, dtypes and shapes,
    with placeholder digests (the plan made with it is only checked, never executed)."""
    where = f"{PENDING}{scan.source.label}"
    tensors = {
        name: {"digest": f"{where}:{name}", "dtype": entry.dtype, "shape": list(entry.shape), "bytes": entry.nbytes}
        for weight in scan.weights
        for name, entry in weight.header.tensors.items()
    }
    files = {rel: {"digest": digest_bytes(scan.source.read(rel)), "bytes": f.size} for rel, f in scan.files.items()}
    document = {
        "kind": "bank",
        "type": "base",
        "tensors": tensors,
        "files": files,
        "config": scan.config,
        "provenance": {"parents": [], "activity": {}},
    }
    return Bank(where, document)


class _WithFolders(Store):
    """The store, plus folders not ingested yet, visible under the refs they will get (and their
    placeholder digests)."""

    def __init__(self, store: Store, pending: dict[str, Bank]) -> None:
        super().__init__(backend=store.backend)
        self.pending = {**pending, **{bank.digest: bank for bank in pending.values()}}

    def bank(self, ref: str) -> Bank:
        return self.pending[ref] if ref in self.pending else super().bank(ref)

    def resolve(self, ref: str) -> str:
        return self.pending[ref].digest if ref in self.pending else super().resolve(ref)


def _check_tokenizers(
    config: mergekit_config.MergekitConfig,
    refs: dict[str, str],
    folders: dict[str, tuple[str, FolderScan]],
    store: Store,
) -> None:
    """`tokenizer_source: base` keeps the base's tokenizer: refuse models whose vocabulary files
    differ from it (mergekit would re-map their embedding rows; we do not)."""
    if "tokenizer_source" not in config.document:
        return

    def vocabulary(model: str) -> dict[str, str]:
        if model in folders:
            scan = folders[model][1]
            return {n: digest_bytes(scan.source.read(n)) for n in scan.files if n in VOCABULARY_FILES}
        return {n: r.digest for n, r in store.bank(refs[model]).files.items() if n in VOCABULARY_FILES}

    expected = vocabulary(mergekit_config.base_string(config))
    problems = []
    for model in dict.fromkeys(config.model_strings()):
        found = vocabulary(model)
        differ = sorted(n for n in set(found) | set(expected) if found.get(n) != expected.get(n))
        if differ:
            problems.append(f"model {model}'s tokenizer differs from the base's ({', '.join(differ)})")
    if problems:
        raise InputError(
            "tokenizer_source: base: " + "; ".join(problems) + "; weightbank merges only models that share the "
            "base's vocabulary (mergekit would re-map their embedding rows)"
        )
