"""Sets of versions of one ref, as steps and commands name them: `"3..7"` (both ends
included), `"3,5,7"` or a list `[3, 5, 7]`, in the order given.

Each version is then an ordinary ref, `NAME@vN`, resolved through the ref history like any
other: a version that does not exist, or that `rm` removed, is an error (never skipped).
"""

from __future__ import annotations

import re

from .errors import InputError
from .names import check_ref_name

_RANGE = re.compile(r"\s*(\d+)\s*\.\.\s*(\d+)\s*")
_LIST = re.compile(r"\s*\d+\s*(,\s*\d+\s*)*")


def parse_versions(value: object) -> list[int]:
    """Version numbers from `"A..B"`, `"A,B,C"` or a list of integers; InputError otherwise."""
    if isinstance(value, str) and (match := _RANGE.fullmatch(value)):
        first, last = int(match[1]), int(match[2])
        if first > last:
            raise InputError(f"versions {value!r}: the range runs backwards")
        numbers = list(range(first, last + 1))
    elif isinstance(value, str) and _LIST.fullmatch(value):
        numbers = [int(part) for part in value.split(",")]
    elif isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        numbers = list(value)
    else:
        raise InputError(f'versions must be a range like "3..7" or a list of version numbers, got {value!r}')
    if min(numbers) < 1:
        raise InputError(f"versions {value!r}: versions start at 1")
    if len(set(numbers)) != len(numbers):
        raise InputError(f"versions {value!r}: a version is listed twice")
    return numbers


def version_refs(name: object, versions: object) -> list[str]:
    """`NAME@vN` for each version of the set (NAME must be a plain ref name)."""
    if not isinstance(name, str):
        raise InputError(f"bank must be a ref name, got {name!r}")
    check_ref_name(name)
    return [f"{name}@v{number}" for number in parse_versions(versions)]
