"""A seeded mutator for the documents weightbank reads from outside or from storage:
safetensors headers, bank manifests, ref entries. Shared by `test_fuzz.py` (a few thousand
cases) and `tests/benchmarks/stress.py` (many more)."""

from __future__ import annotations

import random

_TOKENS = [b"NaN", b"Infinity", b'"\\ud800"', b"[" * 2000, b"9" * 5000, b"[]", b"{}", b"null", b'"F32"', b"-1",
           b'"dtype": ["F32"]', b',"a":1,"a":2', b"\x00", b"\xff\xfe", b'"../x"', b"1e400"]  # fmt: skip


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three random damages: flips, truncation, deletion, insertion of hostile tokens,
    duplicated slices."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        if not out:
            out += rng.choice(_TOKENS)
            continue
        at = rng.randrange(len(out))
        op = rng.randrange(6)
        if op == 0:
            out[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            del out[at:]
        elif op == 2:
            del out[at : at + rng.randint(1, 16)]
        elif op == 3:
            out[at:at] = rng.choice(_TOKENS)
        elif op == 4:
            end = min(len(out), at + rng.randint(1, 64))
            out[at:at] = out[at:end]
        else:
            out[at] = rng.randrange(256)
    return bytes(out)
