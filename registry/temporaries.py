"""Temporary names, and the stale ones that killed writers leave behind.

Every temporary file or folder weightbank makes is named after its owner:
`<uuid hex>-<pid>-<host>`, so the next run (and `gc`, `fsck`) can tell a temporary whose
writer is still running from one whose writer died: a temporary is stale when its host is
this host and its process is gone, or when it is older than `STALE_AFTER_SECONDS` (another
host's writer cannot be asked).
"""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from functools import cache

TEMP_PREFIX = ".tmp-"
STALE_AFTER_SECONDS = 24 * 3600.0
_TOKEN = re.compile(r"(?P<uuid>[0-9a-f]{32})-(?P<pid>\d+)-(?P<host>[A-Za-z0-9._-]+)$")


@cache
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"


def token() -> str:
    """A fresh owner-stamped token: `<uuid hex>-<pid>-<host>`."""
    return f"{uuid.uuid4().hex}-{os.getpid()}-{_host()}"


def temp_name() -> str:
    """A temporary file name in a store: hidden, owner-stamped."""
    return TEMP_PREFIX + token()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def is_stale(name: str, modified: float, now: float | None = None) -> bool:
    """Whether a temporary (its name ends with a token) was left by a writer that is gone."""
    match = _TOKEN.search(name)
    age = (now if now is not None else time.time()) - modified
    if match is None or match["host"] != _host():
        return age > STALE_AFTER_SECONDS
    return not _pid_alive(int(match["pid"])) or age > STALE_AFTER_SECONDS
