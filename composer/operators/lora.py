"""`adapter.lora`: merge PEFT LoRA adapters into the weights, exactly as PEFT does.

    - op: adapter.lora
      bank: my-lora@v2          # one adapter…
      weight: 1.0
    - op: adapter.lora
      adapters:                 # …or several, summed: ΔW = Σ weightᵢ · scaleᵢ · Bᵢ Aᵢ
        - {bank: math@v1, weight: 0.7}
        - {bank: code@v1, weight: 0.3}
    - op: adapter.lora
      adapters: [math@v1, code@v1]   # short form: weight 1.0 each
      check_base: true          # refuse adapters recorded against another base (default)
      untie: false              # tied embedding/head: keep each module's own weight (see below)

Per adapted module (PEFT semantics): scale = lora_alpha / r, or lora_alpha / √r with rsLoRA,
alpha and r looked up in `alpha_pattern` / `rank_pattern` the way PEFT matches them;
ΔW = B @ A (transposed for `fan_in_fan_out`, i.e. GPT-2's Conv1D); embedding LoRA
ΔW = (B @ A)ᵀ; `lora_bias` adds scale · lora_B.bias to the bias; DoRA folds the magnitude,
W' = m / ‖W + ΔW‖ · (W + ΔW) with norms per output feature; `modules_to_save` and saved
base layers replace the tensor. Several adapters in one step give the exact sum of their
weighted deltas — what PEFT's `add_weighted_adapter(combination_type="cat")` merges. PEFT's
`linear` combination averages the A and B factors separately, which adds cross terms
(B₁A₂…), so it is not the sum of the adapters and is not offered.

Tied embeddings (`composer/tied_head.py`): a `modules_to_save` copy of the embedding or the
head unties the pair, the partner keeping the original weight (PEFT's semantics). A LoRA on a
tied embedding or head, merged, moves both — PEFT's merge, which differs from the adapter as
trained; the step warns, and `untie: true` keeps each module's own weight instead (exactly the
unmerged adapter). `ensure_weight_tying` adapters share one delta, added once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from transformers import PreTrainedModel

from weightbank.registry.banks import Bank, TensorRecord
from weightbank.registry.errors import InputError
from weightbank.registry.peft_adapter import classify_key, lora_scale, merge_blockers, module_rank_and_alpha

from ..model_state import BankSource, ModelState, PlanProblem, check_parameters, float32_number, load
from ..oracle import OracleContext
from ..tasks import Add, LowRankTerm, LowRankUpdate, Normalize, Scale, ShapeError, Task
from ..tied_head import TiedPair, tied_pair

NAME = "adapter.lora"


def apply(state: ModelState, step: dict[str, Any], source: BankSource) -> ModelState:
    """Plan the merge of one or more adapters into `state`."""
    check_parameters(step, {"bank", "weight", "adapters", "check_base", "untie"})
    adapters = _adapter_list(step)
    check_base = step.get("check_base", True)
    untie = step.get("untie", False)
    if not isinstance(untie, bool):
        raise PlanProblem(f"untie must be true or false, got {untie!r}")
    if len(adapters) > 1 and any(_is_dora(source.bank(ref, "adapter", "adapter")) for ref, _ in adapters):
        raise PlanProblem("DoRA adapters cannot be summed with others in one step; give each its own step")
    pair = tied_pair(state)
    if untie and pair is None:
        raise PlanProblem("untie: true, but the model's output head is not tied to its input embedding")

    tensors = dict(state.tensors)
    if pair is not None:
        tensors[pair.head] = pair.shared  # the head is the embedding until an adapter says otherwise
    deltas: dict[str, list[LowRankTerm]] = {}
    problems: list[str] = []
    replaced: dict[str, str] = {}
    for ref, weight in adapters:
        bank = source.bank(ref, "adapter", "adapter")
        try:
            _check_supported(bank, ref)
            if check_base:
                _check_base(bank, ref, source)
            modules, replacements = _group(bank)
        except PlanProblem as exc:
            problems.extend(exc.problems)
            continue
        try:
            keeps_tied = pair is not None and _keeps_tied(pair, bank, modules, replacements)
        except PlanProblem as exc:
            problems.extend(f"{ref}: {p}" for p in exc.problems)
            continue
        for target, (record, shared) in replacements.items():
            if target not in tensors:
                problems.append(f"{ref}: replaces {target}, which the model does not have")
            elif tensors[target].shape != record.shape:
                have = list(tensors[target].shape)
                problems.append(f"{ref}: replacement {target} is {list(record.shape)}, the model has {have}")
            elif target in replaced and replaced[target] != ref:
                problems.append(f"{target} is replaced by both {replaced[target]} and {ref}")
            elif pair is not None and target in pair.names:
                shared = shared or keeps_tied
                partner = pair.head if target == pair.embed else pair.embed
                if shared and replaced.get(partner) == ref and tensors[partner] != load(record):
                    problems.append(f"{ref}: saves different tensors for the tied {pair.embed} and {pair.head}")
                _replace_tied(pair, tensors, target, load(record), shared)
                replaced.update(dict.fromkeys(pair.names if shared else (target,), ref))
            else:
                tensors[target], replaced[target] = load(record), ref
        embed_terms = len(deltas.get(pair.embed, [])) if pair is not None else 0
        for module, parts in modules.items():
            try:
                _plan_module(tensors, deltas, module, parts, bank, weight, pair)
            except (PlanProblem, ShapeError) as exc:
                problems.extend(f"{ref}: {module}: {p}" for p in getattr(exc, "problems", [str(exc)]))
        if pair is not None and keeps_tied and len(deltas.get(pair.embed, [])) > embed_terms:
            pair.mirrored.append(deltas[pair.embed].pop())
    if problems:
        raise PlanProblem(*problems)
    config = state.config
    if pair is not None:
        for name in pair.names:
            pair.terms[name] = deltas.pop(name, [])
        config = _resolve_tie(state, pair, tensors, untie, source)
    for name, terms in deltas.items():
        tensors[name] = LowRankUpdate(tensors[name], tuple(terms))
    return ModelState(config, tensors)


def _replace_tied(pair: TiedPair, tensors: dict[str, Task], target: str, task: Task, shared: bool) -> None:
    """A replacement of the embedding or the head: of the shared tensor (a saved base layer, or
    an ensure_weight_tying copy), or of that module's own copy (modules_to_save unties it)."""
    if shared:
        pair.shared = tensors[pair.embed] = tensors[pair.head] = task
    else:
        pair.own[target] = tensors[target] = task


def _module(weight: str) -> str:
    return weight.removesuffix(".weight")


def _keeps_tied(pair: TiedPair, bank: Bank, modules: dict[str, dict[str, Any]], replacements: dict[str, Any]) -> bool:
    """Whether an ensure_weight_tying adapter kept the pair tied. PEFT ties only the modules it
    knows as embeddings, and then saves copies of both modules or LoRA factors on both, the
    head's being the embedding's transposed; that mirrored LoRA is dropped from `modules`
    (its delta is the embedding's)."""
    config = bank.peft_config or {}
    head, embed = _module(pair.head), _module(pair.embed)
    if not config.get("ensure_weight_tying"):
        return False
    if head not in modules or embed not in modules:
        return pair.head in replacements and pair.embed in replacements
    head_parts, embed_parts = modules[head], modules[embed]
    mirror = {"lora_A": "lora_embedding_B", "lora_B": "lora_embedding_A"}
    if any(
        part not in head_parts or other not in embed_parts or head_parts[part].shape != embed_parts[other].shape[::-1]
        for part, other in mirror.items()
    ) or _scale(config, head, head_parts["lora_A"].shape[0]) != _scale(
        config, embed, embed_parts["lora_embedding_A"].shape[0]
    ):
        raise PlanProblem(f"ensure_weight_tying is set but the LoRA on {head} does not mirror the one on {embed}")
    del modules[head]
    return True


def _resolve_tie(
    state: ModelState, pair: TiedPair, tensors: dict[str, Task], untie: bool, source: BankSource
) -> dict[str, Any]:
    """Put the pair's tensors in place and return the config: as PEFT's merge computes them,
    or (untie) as the unmerged adapter does; untied whenever the two tensors differ."""
    moved = pair.moved_by_merge()
    if moved and not untie:
        movers = " and ".join(_module(name) for name in pair.names if pair.terms[name])
        source.warn(
            f"{_module(pair.embed)} and {_module(pair.head)} are tied: merging the LoRA on {movers} into the weight "
            f"they share also changes {' and '.join(map(_module, moved))}, so the merged model differs from the "
            "adapter as trained (unmerged), as PEFT's merge_and_unload does; set untie: true to keep each module's "
            "own weight, which matches the unmerged adapter exactly"
        )
    if pair.mirrored:
        source.warn(
            f"ensure_weight_tying: {_module(pair.head)} shares the LoRA of {_module(pair.embed)}; it is added once, "
            "the function the adapter was trained with (where PEFT re-ties them on loading, its merge_and_unload adds "
            "it once per module, i.e. twice)"
        )
    result = pair.trained() if untie else pair.merged()
    tensors.update(result)
    if not untie and result[pair.embed] == result[pair.head]:
        if pair.head not in state.tensors:
            del tensors[pair.head]
        return state.config
    return {**state.config, pair.tie_key: False}


def _adapter_list(step: Mapping[str, Any]) -> list[tuple[str, float]]:
    if ("bank" in step) == ("adapters" in step):
        raise PlanProblem("give either 'bank' (one adapter) or 'adapters' (a list of {bank, weight})")
    items = [{"bank": step["bank"], "weight": step.get("weight", 1.0)}] if "bank" in step else step["adapters"]
    if not isinstance(items, list) or not items:
        raise PlanProblem("'adapters' must be a non-empty list of refs or {bank, weight}")
    result = []
    for entry in items:
        item = {"bank": entry} if isinstance(entry, str) else entry  # short form `adapters: [a, b]`: weight 1.0
        if not isinstance(item, dict) or not isinstance(item.get("bank"), str) or set(item) - {"bank", "weight"}:
            raise PlanProblem(f"adapter entry {entry!r} must be a ref or {{bank: REF, weight: NUMBER}}")
        result.append((item["bank"], float32_number(item.get("weight", 1.0), f"weight of {item['bank']}")))
    return result


def _is_dora(bank: Bank) -> bool:
    return bool((bank.peft_config or {}).get("use_dora"))


def _check_supported(bank: Bank, ref: str) -> None:
    problems = merge_blockers(bank.peft_config or {}, ref)
    if problems:
        raise PlanProblem(*problems)


def _check_base(bank: Bank, ref: str, source: BankSource) -> None:
    recorded = [p.digest for p in bank.parents if p.role == "base"]
    if recorded and source.base.digest not in recorded:
        raise PlanProblem(
            f"{ref} was trained on base {source.describe(recorded[0])}, not on this composition's base "
            f"{source.describe(source.base.digest)} (set check_base: false to apply it anyway)"
        )


def _group(bank: Bank) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[TensorRecord, bool]]]:
    """LoRA parts by module, and whole-tensor replacements by target name (with whether the
    replacement is a base layer's tensor, shared by tied modules)."""
    modules: dict[str, dict[str, Any]] = {}
    replacements = {}
    for key, record in bank.tensors.items():
        info = classify_key(key)
        if info.part in ("replace", "base_layer"):
            replacements[info.target] = (record, info.part == "base_layer")
        else:
            modules.setdefault(info.module, {})[info.part] = record
    return modules, replacements


def _scale(config: Mapping[str, Any], module: str, rank: int) -> float:
    """PEFT's scaling of one module (alpha by pattern): lora_alpha / r, or lora_alpha / √r with rsLoRA."""
    _, alpha = module_rank_and_alpha(config, module)
    return float(lora_scale(alpha, rank, bool(config.get("use_rslora"))))


def _plan_module(
    tensors: dict[str, Task],
    deltas: dict[str, list[LowRankTerm]],
    module: str,
    parts: dict[str, Any],
    bank: Bank,
    weight: float,
    pair: TiedPair | None,
) -> None:
    config = bank.peft_config or {}
    embedding = "lora_embedding_A" in parts
    a_key, b_key = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
    if a_key not in parts or b_key not in parts:
        raise PlanProblem(f"has only {', '.join(sorted(parts))}")
    a, b = load(parts[a_key]), load(parts[b_key])
    rank = a.shape[0]
    expected_rank, _ = module_rank_and_alpha(config, module)
    if expected_rank != rank:
        raise PlanProblem(f"lora_A has rank {rank} but the adapter config says r={expected_rank}")
    factor = weight * _scale(config, module, rank)
    weight_name = f"{module}.weight"
    if weight_name not in tensors:
        raise PlanProblem(f"the model has no {weight_name}")
    current = tensors[weight_name]
    transposed = embedding or bool(config.get("fan_in_fan_out"))
    if b.shape[1] != a.shape[0]:
        raise PlanProblem(f"lora_B {list(b.shape)} and lora_A {list(a.shape)} disagree on the rank")
    term = LowRankTerm(b, a, factor, transposed)
    if term.shape != current.shape:
        raise PlanProblem(f"ΔW is {list(term.shape)} but {weight_name} is {list(current.shape)}")
    if "magnitude" in parts:
        if pair is not None and weight_name in pair.names:
            raise PlanProblem("DoRA on a tied embedding or head is not supported")
        out_axis = 1 if transposed else 0
        tensors[weight_name] = Normalize(LowRankUpdate(current, (term,)), load(parts["magnitude"]), out_axis)
    else:
        deltas.setdefault(weight_name, []).append(term)
    if "lora_B_bias" in parts:
        bias_name = f"{module}.bias"
        if bias_name not in tensors:
            raise PlanProblem(f"lora_bias needs {bias_name}, which the model does not have")
        tensors[bias_name] = Add(tensors[bias_name], Scale(load(parts["lora_B_bias"]), factor))


def oracle(model: PreTrainedModel, step: dict[str, Any], context: OracleContext) -> PreTrainedModel:
    """PEFT's own model: every adapter loaded, its weight set as its scale (`set_scale`, which
    respects rsLoRA); then `merge_and_unload` of them all — except where the step keeps the
    adapter's unmerged function (`untie: true`, ensure_weight_tying adapters on a tied model),
    whose reference is PEFT's unmerged forward. (PEFT's `add_weighted_adapter` with `cat`
    computes the same sum, except that its combined adapter inherits `use_rslora` with
    lora_alpha = r and so is scaled by √r more; set_scale has no such quirk.)"""
    try:
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer
    except ImportError:
        raise InputError("verify needs PEFT for adapter.lora steps (pip install peft)") from None
    adapters = _adapter_list(step)
    names = [f"adapter{i}" for i in range(len(adapters))]
    peft_model = PeftModel.from_pretrained(model, context.export(adapters[0][0]), adapter_name=names[0])
    for name, (ref, _) in zip(names[1:], adapters[1:], strict=True):
        peft_model.load_adapter(context.export(ref), adapter_name=name)
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            for name, (_, weight) in zip(names, adapters, strict=True):
                if name in module.scaling:
                    module.set_scale(name, weight)
    if step.get("untie") or _ties_head_lora(peft_model):
        cast(Any, peft_model.base_model).set_adapter(names)
        return cast(PreTrainedModel, peft_model.eval())
    return peft_model.merge_and_unload(adapter_names=names)


def _ties_head_lora(peft_model: Any) -> bool:
    """Whether PEFT loaded an ensure_weight_tying adapter with the head's LoRA factors tied to
    the embedding's (shared storage): the composition then keeps the unmerged function."""
    head, embedding = peft_model.get_output_embeddings(), peft_model.get_input_embeddings()
    factors = getattr(embedding, "lora_embedding_B", {})
    return any(
        name in getattr(head, "lora_A", {}) and head.lora_A[name].weight.data_ptr() == factors[name].data_ptr()
        for name in factors
    )
