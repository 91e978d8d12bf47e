"""Long commands show progress on a terminal (tqdm on stderr), never elsewhere, never with -q."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from helpers import Cli

# (command, what its bar says)
LONG_COMMANDS = [
    (["verify", "m"], "verify"),
    (["plan", "m", "--target-params", "300K"], "plan"),
    (["analyze", "m"], "analyze"),
    (["audit", "m"], "audit m"),
    (["fsck"], "fsck"),
]


@pytest.fixture
def store(wb: Cli, tiny_folders) -> Cli:
    wb("ingest", tiny_folders("llama"), "--name", "m")
    return wb


@pytest.mark.parametrize(("args", "label"), LONG_COMMANDS, ids=[args[0] for args, _ in LONG_COMMANDS])
def test_long_commands_show_progress_on_a_terminal(args, label, store: Cli, monkeypatch) -> None:
    assert store(*args).stderr == ""  # not a terminal: nothing
    monkeypatch.setattr("weightbank.registry.progress.progress_wanted", lambda quiet: not quiet)
    assert f"\r{label}: " in store(*args).stderr
    assert store("-q", *args).stderr == ""


def test_a_real_terminal_gets_bars_and_q_silences_them(store: Cli) -> None:
    def stderr_on_a_terminal(*args: str) -> str:
        controller, terminal = pty.openpty()
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # tqdm draws nothing in 0x0
        try:
            subprocess.run([sys.executable, "-m", "weightbank", "--store", str(store.store), *args],
                           stdout=subprocess.DEVNULL, stderr=terminal, timeout=120, check=True)  # fmt: skip
        finally:
            os.close(terminal)
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal is closed: all was read
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(controller)
        return b"".join(chunks).decode("utf-8", "replace")

    assert "fsck: " in stderr_on_a_terminal("fsck") and "object" in stderr_on_a_terminal("fsck")
    assert stderr_on_a_terminal("-q", "fsck") == ""


def test_no_progress_off_a_terminal_in_a_subprocess(store: Cli, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "weightbank", "--store", str(store.store), "fsck"],
                          capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    assert done.stderr == "" and done.stdout.startswith("ok: store")
