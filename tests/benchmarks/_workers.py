"""Benchmark workers: each runs in its own process, imports first, then times one operation
and prints JSON (seconds, peak RSS). `python _workers.py KIND DEVICE DTYPE ARGS…`

Loading kinds are timed up to the first output of a 16-token forward pass: on the CPU,
`from_pretrained` only memory-maps the checkpoint and reads it during that first pass, so
stopping the clock at the return of `from_pretrained` would time nothing."""

from __future__ import annotations

import json
import resource
import sys
import time


def worker(kind: str, args: list[str]) -> None:
    """Import, then time one operation; print JSON."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, PreTrainedModel

    from weightbank.composer import compose, write

    del PreTrainedModel  # imported for its side effect: transformers' modeling code is loaded before timing

    device, dtype_name, *rest = args  # device: cpu, cuda, or auto (device_map="auto" for both)
    dtype = getattr(torch, dtype_name)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if kind == "from_pretrained":
        model = AutoModelForCausalLM.from_pretrained(rest[0], dtype=dtype, device_map=device)
    elif kind == "compose":
        spec = json.loads(rest[1])
        model, _ = compose(spec, device=device, dtype=dtype_name, store=rest[0])
    elif kind == "compose_out":
        write(json.loads(rest[1]), out_dir=rest[2], dtype=dtype_name, store=rest[0])
        model = None
    elif kind == "peft_merge_save":
        base = AutoModelForCausalLM.from_pretrained(rest[0], dtype=dtype, device_map=device)
        model = PeftModel.from_pretrained(base, rest[1]).merge_and_unload()
        model.save_pretrained(rest[2])
    else:
        raise SystemExit(f"unknown worker {kind}")
    if kind in ("from_pretrained", "compose"):
        with torch.no_grad():
            model(torch.arange(16, device=model.device).unsqueeze(0))
    on_gpu = device != "cpu" and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gpu_peak = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) if on_gpu else 0
    print(json.dumps({"seconds": seconds, "peak_rss_mb": usage / 1024, "import_rss_mb": baseline_rss / 1024,
                      "gpu_peak_mb": gpu_peak / 2**20}))  # fmt: skip
    del model


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2:])
