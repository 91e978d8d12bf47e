"""The one-pass LoRA merge (composer/low_rank.py) against PEFT's own LoRA layer merging the same
factors (`peft.tuners.lora.Linear.merge`), in several row blocks spread over the worker pool."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Linear
from transformers.pytorch_utils import Conv1D

from weightbank.composer import row_blocks
from weightbank.composer.low_rank import bfloat16_gemm_is_native, low_rank_update

ROWS, COLS = 384, 520
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(row_blocks, "BLOCK_BYTES", 64 << 10)  # 31 rows a block: 13 blocks, uneven last


def _peft_merged(weight: torch.Tensor, adapters: list[tuple[int, float]], fan_in_fan_out: bool, seed: int = 0):
    """PEFT's merge of random adapters (rank, lora_alpha) into a copy of `weight` (nn.Linear's
    (out, in), or Conv1D's (in, out)), and our terms for the same factors."""
    out_features, in_features = weight.shape[::-1] if fan_in_fan_out else weight.shape
    base = Conv1D(out_features, in_features) if fan_in_fan_out else torch.nn.Linear(in_features, out_features, False)
    base.weight.data = weight.clone()
    generator = torch.Generator().manual_seed(seed)
    layer, terms, names = None, [], []
    for number, (rank, alpha) in enumerate(adapters):
        config = LoraConfig(r=rank, lora_alpha=alpha, fan_in_fan_out=fan_in_fan_out, init_lora_weights=False)
        name = f"a{number}"
        if layer is None:
            layer = Linear(base, name, config, r=rank, lora_alpha=alpha, is_target_conv_1d_layer=fan_in_fan_out)
        else:
            layer.update_layer(name, rank, alpha, config=config)
        a = torch.randn(rank, in_features, generator=generator) * 0.05
        b = torch.randn(out_features, rank, generator=generator) * 0.05
        layer.lora_A[name].weight.data, layer.lora_B[name].weight.data = a, b
        terms.append((b, a, alpha / rank, fan_in_fan_out))
        names.append(name)
    layer.merge(adapter_names=names)
    return layer.get_base_layer().weight.data, terms


@pytest.mark.parametrize("fan_in_fan_out", [False, True])
@pytest.mark.parametrize("alpha", [16, 13], ids=["scale-2", "scale-1.625"])
def test_one_adapter_is_peft_merge_bit_for_bit(alpha: int, fan_in_fan_out: bool) -> None:
    """Scale 2 takes the fused pass, 13/8 PEFT's arithmetic: both equal PEFT's merge."""
    weight = torch.randn((COLS, ROWS) if fan_in_fan_out else (ROWS, COLS)) * 0.02
    expected, terms = _peft_merged(weight, [(8, alpha)], fan_in_fan_out)
    ours = low_rank_update(weight, terms, torch.empty_like(weight))
    assert torch.equal(ours, expected)
    bf16 = low_rank_update(weight.bfloat16(), terms, torch.empty(weight.shape, dtype=torch.bfloat16))
    exact_then_rounded = low_rank_update(weight.bfloat16().float(), terms, torch.empty_like(weight)).bfloat16()
    assert torch.equal(bf16, exact_then_rounded)  # float32 arithmetic, one rounding
    owned = weight.clone()
    assert low_rank_update(owned, terms, owned) is owned and torch.equal(owned, expected)  # in place


def test_several_adapters_fused_within_gemm_rounding_and_exact_bit_for_bit() -> None:
    weight = torch.randn(ROWS, COLS) * 0.02
    adapters = [(8, 16.0), (4, 6.0), (16, 11.0)]
    expected, terms = _peft_merged(weight, adapters, fan_in_fan_out=False, seed=3)
    fused = low_rank_update(weight, terms, torch.empty_like(weight))
    rank = sum(r for r, _ in adapters)
    bound = weight.abs() + sum(abs(s) * (b.abs() @ a.abs()) for b, a, s, _ in terms)
    assert ((fused - expected).abs() <= (rank + 2) * 2.0**-24 * bound).all()  # GEMM rounding, no more
    assert (fused.bfloat16() == expected.bfloat16()).float().mean().item() >= 0.999
    assert torch.equal(low_rank_update(weight, terms, torch.empty_like(weight), exact=True), expected)


def test_bfloat16_weight_with_bfloat16_factors_is_the_float32_merge_rounded_once() -> None:
    """The bf16 GEMM (where the CPU has bf16 instructions) sums the products in its own order:
    all but a few elements per million are the float32 merge rounded once; the rest are one bf16
    ulp off, or — where W + ΔW cancels to almost nothing — within the GEMM's float32 rounding.
    exact=True takes the float32 block: the float32 merge rounded once, bit for bit."""
    generator = torch.Generator().manual_seed(7)
    weight = (torch.randn(2048, 1024, generator=generator) * 0.02).bfloat16()
    b = (torch.randn(2048, 16, generator=generator) * 0.05).bfloat16().float()
    a = (torch.randn(16, 1024, generator=generator) * 0.05).bfloat16().float()
    terms = [(b, a, 2.0, False)]
    expected = low_rank_update(weight.float(), terms, torch.empty(weight.shape)).bfloat16()
    ours = low_rank_update(weight, terms, torch.empty_like(weight))
    one_ulp = (expected.float().abs() * 2.0**-7).clamp_min(2.0**-133)
    gemm_rounding = 18 * 2.0**-24 * (weight.float().abs() + 2 * (b.abs() @ a.abs()))
    assert ((ours.float() - expected.float()).abs() <= one_ulp + gemm_rounding).all()
    assert (ours == expected).float().mean().item() >= 0.9999
    if not bfloat16_gemm_is_native(torch.device("cpu")):
        assert torch.equal(ours, expected)  # the float32 block: rounded once, bit for bit
    assert torch.equal(low_rank_update(weight, terms, torch.empty_like(weight), exact=True), expected)
    scaled = [(b, a, 0.7, False), (b, a, 0.5, False)]  # 0.7 · A is not a bf16 matrix: the float32 block
    expected = low_rank_update(weight.float(), scaled, torch.empty(weight.shape)).bfloat16()
    assert torch.equal(low_rank_update(weight, scaled, torch.empty_like(weight)), expected)


def test_runs_in_row_blocks_on_the_pool_and_restores_torch_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []
    real = row_blocks.for_row_blocks

    def recording(rows, step, work, device):
        real(rows, step, lambda start, stop: (seen.append((start, stop)), work(start, stop)), device)

    monkeypatch.setattr("weightbank.composer.low_rank.for_row_blocks", recording)
    threads = torch.get_num_threads()
    weight = torch.randn(ROWS, COLS)
    _, terms = _peft_merged(weight, [(4, 8)], fan_in_fan_out=False)
    low_rank_update(weight, terms, torch.empty_like(weight))
    assert sorted(seen) == [(start, min(ROWS, start + 31)) for start in range(0, ROWS, 31)]
    assert torch.get_num_threads() == threads


@pytest.mark.gpu
@cuda
def test_merge_on_the_gpu_uploads_factors_not_float32_weights() -> None:
    weight = (torch.randn(8192, 4096) * 0.02).bfloat16()
    _, terms = _peft_merged(weight.float(), [(16, 32)], fan_in_fan_out=False)
    on_cpu = low_rank_update(weight, terms, torch.empty_like(weight))
    device = torch.device("cuda")
    gpu_weight = weight.to(device)
    gpu_terms = [(b.to(device), a.to(device), s, t) for b, a, s, t in terms]
    out = torch.empty_like(gpu_weight)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    low_rank_update(gpu_weight, gpu_terms, out)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra <= 2 * (row_blocks.BLOCK_BYTES + (16 << 20)), extra  # blocks and factors, no float32 weight
    assert (out.cpu().float() - on_cpu.float()).abs().max().item() <= 2 * 2.0**-8 * on_cpu.float().abs().max().item()
