"""What `show` prints about a bank: sizes, and what each bank type is made of."""

from __future__ import annotations

from typing import Any

from .output import human_bytes


def describe_bank(store: Any, digest: str, manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows: names, tensors and files with both sizes, the type's own facts
    (an expansion's recipe and target size, an adapter's r, alpha and targets), parents (an
    adapter's base among them) and who made it — banks named by their refs."""
    from weightbank.registry.banks import Bank
    from weightbank.registry.naming import names_by_target, plural

    bank = Bank(digest, manifest)
    names = names_by_target(store)
    rows = [("names", ", ".join(names.get(digest, [])) or "-")]
    rows.append(
        ("tensors", f"{plural(len(bank.tensors), 'tensor')} ({human_bytes(bank.tensor_bytes)} of tensor data), "
                    f"{bank.parameters:,} parameters stored")
    )  # fmt: skip
    files = ", ".join(sorted(bank.files))
    rows.append(
        (
            "files",
            f"{plural(len(bank.files), 'file')} ({human_bytes(bank.file_bytes)})" + (f": {files}" if files else ""),
        )
    )
    rows += _type_rows(bank)
    for parent in bank.parents:
        rows.append(("parent", f"{parent.role}: {_named(store, parent.digest, names)}"))
    activity = bank.activity
    rows.append(("made by", f"{activity['operator']} ({activity['tool']}), {activity['agent']}, {activity['time']}"))
    if activity.get("message"):
        rows.append(("message", activity["message"]))
    return rows


def _named(store: Any, digest: str, names: dict[str, list[str]]) -> str:
    from weightbank.registry.digest import short
    from weightbank.registry.naming import display_name

    label = display_name(store, digest, names)
    return label if label == short(digest) else f"{label} ({short(digest)})"


def _type_rows(bank: Any) -> list[tuple[str, str]]:
    if bank.type == "expansion":
        return _expansion_rows(bank)
    if bank.type == "adapter":
        return _adapter_rows(bank)
    if bank.type == "prism":
        from .prism_commands import grid_rows

        return grid_rows(bank.document["grid"])
    return []


def _expansion_rows(bank: Any) -> list[tuple[str, str]]:
    from weightbank.composer.analyze import count_parameters
    from weightbank.composer.planner import describe_steps
    from weightbank.registry.errors import WeightbankError

    steps = bank.document["recipe"]["steps"]
    rows = [("recipe", describe_steps(steps))]
    if bank.config is not None:
        try:
            target = f"{count_parameters(bank.config):,} parameters"
        except WeightbankError as exc:
            target = f"unknown ({exc})"
        rows.append(
            (
                "target",
                f"{target} ({', '.join(bank.config.get('architectures') or [bank.config.get('model_type', '?')])})",
            )
        )
    return rows


def _adapter_rows(bank: Any) -> list[tuple[str, str]]:
    """The adapter's kind, r, alpha and targets (its base is the `base` parent, by name)."""
    config = bank.peft_config or {}
    targets = config.get("target_modules")
    targets = ", ".join(sorted(targets)) if isinstance(targets, list) else str(targets)
    kind = "rsLoRA" if config.get("use_rslora") else "DoRA" if config.get("use_dora") else "LoRA"
    return [("adapter", f"{kind} r={config.get('r')}, alpha={config.get('lora_alpha')}, targets {targets}")]
