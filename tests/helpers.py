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


def write_key_pair(folder: Path, name: str, kind: str = "p256", password: bytes | None = None) -> tuple[Path, Path]:
    """A fresh key pair as PEM files `NAME.pem` (private, PKCS#8; encrypted with `password`) and
    `NAME.pub.pem`. `kind`: p256, p384, ed25519 or rsa."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    makers = {
        "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate,
        "rsa": lambda: rsa.generate_private_key(65537, 2048),
    }
    key = makers[kind]()
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def key_id(public: Path) -> str:
    """The key id weightbank should give the public key in `public`: sha256 of its PEM."""
    import hashlib

    return "sha256:" + hashlib.sha256(public.read_bytes()).hexdigest()
