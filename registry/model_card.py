"""The model card a published bank carries: `README.md` with YAML front matter the Hub reads.

Front matter (huggingface_hub's `ModelCardData`): `base_model` — the Hub repo the bank's base
came from, where provenance records one (ingested from `hf://…`); `library_name`
(`transformers` for a base, `peft` for an adapter); `tags` (`weightbank` and the bank type);
`pipeline_tag` for causal LMs; the license and languages of the bank's own model card, if it
had one (a derivative keeps its base's license); and a `weightbank` section naming the bank
and its composition by digest. The body gives the composition manifest (for a composed bank),
the lineage as a Mermaid diagram (`provenance.render_mermaid`; the Hub renders it) and how to
load the model.
"""

from __future__ import annotations

from typing import Any

import yaml

from .banks import Bank
from .checkpoints import MODEL_CARD
from .digest import short
from .errors import WeightbankError
from .naming import plural, with_article
from .provenance import build_lineage, render_mermaid
from .store import Store

# Keys of the bank's own card that describe the weights, not the card: kept on a derivative.
INHERITED_KEYS = ("license", "license_name", "license_link", "language", "datasets")


def model_card(store: Store, bank: Bank, ref: str, repo_id: str | None = None) -> str:
    """The README.md for bank `ref` published as `repo_id` (a Hub repo id, or None elsewhere)."""
    from huggingface_hub import ModelCardData

    composition = _composition(store, bank)
    inherited = _own_card_data(store, bank)
    base_model = hub_base_model(store, bank)
    architectures = (bank.config or {}).get("architectures") or []
    causal = any(str(name).endswith("ForCausalLM") for name in architectures)
    data = ModelCardData(
        base_model=base_model,
        library_name="peft" if bank.type == "adapter" else "transformers",
        pipeline_tag="text-generation" if causal else None,
        tags=["weightbank", bank.type],
        weightbank={"bank": bank.digest, "ref": ref}
        | ({"composition": composition[0]} if composition is not None else {}),
        **{key: inherited[key] for key in INHERITED_KEYS if key in inherited},
    )
    title = repo_id or ref
    sections = [
        f"# {title}",
        f"{with_article(bank.type).capitalize()} bank published by weightbank from `{ref}` (`{short(bank.digest)}`): "
        f"{plural(len(bank.tensors), 'tensor')}, {plural(bank.parameters, 'parameter')}"
        + (f", adapted from [{base_model}](https://huggingface.co/{base_model})" if base_model else "")
        + ". `weightbank.json` beside this card is the bank's manifest (MES v1); `weightbank ingest` of this repo "
        "recognises it.",
        _usage(bank, repo_id, causal, base_model),
    ]
    if composition is not None:
        sections += ["## Composition", "```yaml\n" + yaml.safe_dump(composition[1], sort_keys=False).rstrip() + "\n```"]
    sections += ["## Lineage", "```mermaid\n" + render_mermaid(build_lineage(store, bank.digest)) + "\n```"]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"


def card_bank(text: str) -> str | None:
    """The bank digest a model card's front matter names (`weightbank: {bank: …}`): a card this
    module made, or one edited since."""
    if not text.startswith("---\n") or text.count("---\n") < 2:
        return None
    try:
        front = yaml.safe_load(text.split("---\n", 2)[1])
    except yaml.YAMLError:
        return None
    section = front.get("weightbank") if isinstance(front, dict) else None
    bank = section.get("bank") if isinstance(section, dict) else None
    return bank if isinstance(bank, str) else None


def hub_base_model(store: Store, bank: Bank) -> str | None:
    """The Hub model repo the bank's base was ingested from, following `base` parents (an adapter's
    base, a composition's base), or the bank's own source repo; None if none was a Hub model."""
    pending, seen = [bank.digest], set()
    while pending:
        digest = pending.pop(0)
        if digest in seen:
            continue
        seen.add(digest)
        try:
            document = store.manifests.get(digest)
        except WeightbankError:
            continue
        activity = document.get("provenance", {}).get("activity", {})
        parameters = activity.get("parameters", {})
        if activity.get("operator") == "ingest" and "repo" in parameters and "repo_type" not in parameters:
            return str(parameters["repo"])
        pending += [p["digest"] for p in document.get("provenance", {}).get("parents", []) if p["role"] == "base"]
    return None


def _composition(store: Store, bank: Bank) -> tuple[str, dict[str, Any]] | None:
    """(digest, document) of the composition a composed bank was made by."""
    for parent in bank.parents:
        if parent.role == "composition":
            return parent.digest, store.manifests.get(parent.digest)
    return None


def _own_card_data(store: Store, bank: Bank) -> dict[str, Any]:
    """The front matter of the bank's own README.md (a base ingested from the Hub has one)."""
    from huggingface_hub import ModelCard

    record = bank.files.get(MODEL_CARD)
    if record is None:
        return {}
    try:
        return dict(ModelCard(store.objects.read(record.digest).decode("utf-8")).data.to_dict())
    except (ValueError, UnicodeDecodeError, yaml.YAMLError):
        return {}


def _usage(bank: Bank, repo_id: str | None, causal: bool, base_model: str | None) -> str:
    where = f'"{repo_id or "PATH"}"'
    if bank.type == "adapter":
        base = base_model or (bank.peft_config or {}).get("base_model_name_or_path") or "BASE_MODEL"
        code = (
            "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
            f'base = AutoModelForCausalLM.from_pretrained("{base}")\nmodel = PeftModel.from_pretrained(base, {where})'
        )
    else:
        loader = "AutoModelForCausalLM" if causal else "AutoModel"
        code = f"from transformers import {loader}\n\nmodel = {loader}.from_pretrained({where})"
    return f"```python\n{code}\n```"
