"""The growth planner is bounded: seconds for any target, exact counts, no target below the
model; `expand` takes several axes as one recipe and `--plan K` as printed."""

from __future__ import annotations

import json
import time

import pytest

from weightbank.composer.analyze import count_parameters
from weightbank.composer.plan import Sources, apply_steps, resolve_base, starting_state
from weightbank.composer.planner import candidates
from weightbank.composer.tiny_models import FAMILIES
from weightbank.registry import Registry

from helpers import Cli


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, tiny_folders) -> dict[str, Registry]:
    found = {}
    for family in (*FAMILIES, "bert"):
        registry = Registry(tmp_path_factory.mktemp(f"plan-{family}"))
        registry.ingest(tiny_folders(family) if family != "bert" else _bert(tmp_path_factory), "base")
        found[family] = registry
    return found


def _bert(tmp_path_factory: pytest.TempPathFactory):
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("bert")
    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                        vocab_size=128, max_position_embeddings=64)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    return folder


def grown_count(registry: Registry, steps: list[dict]) -> int:
    """Parameters after `steps`, by running the real operators on the description."""
    base, expansion = resolve_base(registry.store, "base")
    sources, problems = Sources(registry.store, base), []
    state = apply_steps(starting_state(base, expansion, sources, problems), steps, sources, problems)
    assert not problems, problems
    return count_parameters(state.config)


@pytest.mark.parametrize("family", [*FAMILIES, "bert"])
def test_counts_are_exact_for_every_family(family: str, stores: dict[str, Registry]) -> None:
    registry = stores[family]
    current = grown_count(registry, [])
    for factor in (1.3, 3, 11):
        found = candidates(registry.store, "base", int(current * factor))
        assert found, family
        for candidate in found:
            assert candidate.parameters == grown_count(registry, candidate.steps), candidate.describe()


@pytest.mark.parametrize("target", ["2B", "1e15"])
def test_any_target_is_planned_in_seconds(target: str, wb: Cli, tiny_folders) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "tiny")
    start = time.perf_counter()
    table = json.loads(wb("plan", "tiny", "--target-params", target, "--json").stdout)
    assert time.perf_counter() - start < 10  # (was > 16 minutes for 2B)
    goal = 2e9 if target == "2B" else 1e15
    assert abs(table[0]["parameters"] - goal) / goal < 1e-3
    assert {step["op"] for row in table for step in row["steps"]} >= {"expand.depth", "expand.ffn", "expand.hidden"}


def test_targets_not_above_the_model_are_refused(wb: Cli, tiny_folders) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "tiny")
    current = json.loads(wb("analyze", "tiny", "--json").stdout)["parameters"]
    for target in ("1000", str(current)):
        result = wb("plan", "tiny", "--target-params", target, ok=False)
        assert result.exit_code == 1
        assert result.stderr == (
            f"error: target {int(target):,} parameters is not above tiny's current {current:,}: "
            "growth only adds parameters\n"
        )


def test_expand_takes_several_axes_as_one_recipe(wb: Cli, tiny_folders) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "tiny")
    made = json.loads(wb("expand", "tiny", "--name", "big", "--depth", "3", "--ffn", "192", "--hidden", "128",
                         "--json").stdout)  # fmt: skip
    assert made["steps"] == [
        {"op": "expand.hidden", "size": 128},
        {"op": "expand.ffn", "size": 192},
        {"op": "expand.depth", "layers": 3},
    ]
    record = json.loads(wb("analyze", "big", "--json").stdout)
    assert (record["layers"], record["intermediate"], record["hidden"]) == (3, 192, 128)
    assert made["parameters"] == record["parameters"]
    assert json.loads(wb("verify", "big", "--json").stdout)["ok"]  # still the same function


def test_expand_plan_k_is_what_plan_printed(wb: Cli, tiny_folders) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "tiny")
    table = json.loads(wb("plan", "tiny", "--target-params", "300K", "--json").stdout)
    for k in (0, len(table) - 1):
        made = json.loads(wb("expand", "tiny", "--name", f"grown{k}", "--plan", str(k), "--target-params", "300K",
                             "--json").stdout)  # fmt: skip
        assert made["steps"] == table[k]["steps"] and made["parameters"] == table[k]["parameters"]


def test_axis_options_go_with_their_axis(wb: Cli, tiny_folders) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "tiny")
    made = json.loads(wb("expand", "tiny", "--name", "placed", "--depth", "4", "--ffn", "256",
                         "--placement", "interior", "--json").stdout)  # fmt: skip
    assert made["steps"] == [
        {"op": "expand.ffn", "size": 256},
        {"op": "expand.depth", "layers": 4, "placement": "interior"},
    ]
    refused = wb("expand", "tiny", "--name", "p2", "--ffn", "256", "--placement", "interior", ok=False)
    assert refused.stderr == "error: --placement goes with --depth\n"
