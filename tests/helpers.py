"""Plain helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result

from weightbank.cli.main import cli


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under a folder and its bytes: 'store unchanged' means equal snapshots."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Cli:
    """Runs `weightbank --store STORE …` in-process and returns click's Result."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.runner = CliRunner()

    def __call__(self, *args: str, ok: bool = True) -> Result:
        result = self.runner.invoke(cli, ["--store", str(self.store), *map(str, args)], catch_exceptions=False)
        if ok and result.exit_code != 0:
            raise AssertionError(f"weightbank {' '.join(map(str, args))} failed: {result.output}{result.stderr}")
        return result


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The installed `weightbank` console script in a subprocess."""
    result = subprocess.run(
        [sys.executable, "-m", "weightbank", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"weightbank {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def make_lora(base_folder: Path, out: Path, seed: int = 0, **config: object) -> Path:
    """A real PEFT LoRA adapter for the model in `base_folder`, with random (non-zero) factors;
    DoRA magnitudes, lora_B biases and `modules_to_save` copies are perturbed too, so that
    none of them equals what it starts from."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_folder)
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, **config))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if (
                "lora_magnitude_vector" in name
                or ("lora_B" in name and name.endswith("bias"))
                or "modules_to_save" in name
            ):
                param.mul_(1 + 0.2 * torch.rand_like(param)).add_(0.01)
    peft_model.save_pretrained(out)
    return out
