"""Every command, driven with bad input: one line on stderr starting `error: `, no traceback,
a non-zero exit, nothing on stdout, and the store exactly as it was.

The commands are discovered from the click group, so a command added without an entry in
BAD_INPUT fails `test_every_command_has_bad_input`: add its bad invocations there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from weightbank.cli.main import cli

from helpers import make_lora, snapshot


@dataclass(frozen=True)
class Bad:
    """One bad invocation: its arguments (`{folder}`, `{out}` and `{file}` are filled in), and
    optionally the environment and the store it runs against (`missing`: a store that does not exist)."""

    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    store: str = "populated"

    def __init__(self, *args: str, env: dict[str, str] | None = None, store: str = "populated") -> None:
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "env", env or {})
        object.__setattr__(self, "store", store)


UNREACHABLE_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens on the discard port

# The populated store holds: base `m` (a tiny Llama), adapter `lo` on it, expansion `x` of it.
BAD_INPUT: dict[str, list[Bad]] = {
    "ingest": [
        Bad("ingest", "/definitely/missing", "--name", "x"),
        Bad("ingest", "{folder}", "--name", "../up"),
        Bad("ingest", "{folder}", "--name", "m2", "--base", "m"),
        Bad("ingest", "{folder}"),
        Bad("ingest", "hf://team", "--name", "x"),
        Bad("ingest", "nosuch://bucket/model", "--name", "x"),
        Bad("ingest", "hf://team/model@main", "--name", "x", env=UNREACHABLE_HUB),
    ],
    "export": [
        Bad("export", "ghost", "{out}"),
        Bad("export", "x", "{out}"),
        Bad("export", "m", "{file}"),
        Bad("export", "m", "hf://team"),
        Bad("export", "m", "hf://datasets/team/m"),
        Bad("export", "m", "{out}", "--revision", "dev"),
        Bad("export", "m", "{out}", "--create"),
        Bad("export", "x", "hf://team/m", "--create", "--private", env=UNREACHABLE_HUB),
        Bad("export", "m", "hf://team/m", "--revision", "dev", "-m", "note", env=UNREACHABLE_HUB),
        Bad("export", "m", "nosuch://bucket/m"),
    ],
    "show": [Bad("show", "ghost"), Bad("show", "m@v9"), Bad("show", "blake3:zz"), Bad("show", "m", store="missing")],
    "log": [Bad("log", "ghost"), Bad("log", "m", "-n", "-1"), Bad("log", "m", store="missing")],
    "refs": [Bad("refs", "extra"), Bad("refs", store="missing")],
    "rollback": [Bad("rollback", "m", "--to", "9"), Bad("rollback", "ghost", "--to", "1"), Bad("rollback", "m")],
    "rm": [Bad("rm", "ghost"), Bad("rm", "m@v9"), Bad("rm", "m@v1", "--purge"), Bad("rm", "blake3:0123456789ab")],
    "lineage": [
        Bad("lineage", "ghost"),
        Bad("lineage", "m", "--format", "dot", "--json"),
        Bad("lineage", "m", "--format", "svg", env={"PATH": "/nonexistent"}),
        Bad("lineage", "m", "--format", "gif"),
    ],
    "audit": [Bad("audit", "ghost"), Bad("audit", "m", store="missing")],
    "fsck": [
        Bad("fsck", "--bogus"),
        Bad("fsck", "--repair"),
        Bad("fsck", "--repair", "ghost"),
        Bad("fsck", store="missing"),
    ],
    "gc": [Bad("gc", "--grace", "soon"), Bad("gc", "--keep-last", "-1"), Bad("gc", store="missing")],
    "demo": [Bad("demo", "--bogus")],
    "compose": [
        Bad("compose", "m"),
        Bad("compose", "m", "--device", "mps"),
        Bad("compose", "m", "--device", "gpu"),
        Bad("compose", "m", "--device", "cuda:7"),
        Bad("compose", "nosuch.yaml", "--dry-run"),
        Bad("compose", "{file}", "--dry-run"),
        Bad("compose", "lo", "--dry-run"),
        Bad("compose", "m", "--name", "n", "--device", "cpu"),
    ],
    "verify": [Bad("verify", "ghost"), Bad("verify", "m", "--against", "lo"), Bad("verify", "{file}")],
    "import-mergekit": [
        Bad("import-mergekit", "nosuch.yml"),
        Bad("import-mergekit", "{file}"),
        Bad("import-mergekit", "{folder}"),
    ],
    "analyze": [Bad("analyze", "ghost"), Bad("analyze", "lo"), Bad("analyze", "./no-such-folder")],
    "plan": [
        Bad("plan", "m", "--target-params", "1K"),
        Bad("plan", "m", "--target-params", "lots"),
        Bad("plan", "lo", "--target-params", "1M"),
    ],
    "expand": [
        Bad("expand", "lo", "--name", "y", "--depth", "4"),
        Bad("expand", "m", "--name", "y"),
        Bad("expand", "m", "--name", "y", "--depth", "1"),
        Bad("expand", "m", "--name", "y", "--depth", "4", "--ffn", "256", "--method", "zero"),
        Bad("expand", "m", "--name", "y", "--plan", "99", "--target-params", "200K"),
        Bad("expand", "m", "--name", "y", "--ffn", "256", "--placement", "interior"),
    ],
    "remote add": [Bad("remote", "add", "o", "ftp://x"), Bad("remote", "add", "../o", "file:///tmp/x")],
    "remote ls": [Bad("remote", "ls", "extra"), Bad("remote", "ls", store="missing")],
    "remote rm": [Bad("remote", "rm", "ghost")],
    "push": [Bad("push", "ghost-remote", "m"), Bad("push", "file:///nonexistent-wb-remote", "ghost")],
    "pull": [Bad("pull", "ghost-remote", "m"), Bad("pull", "file:///nonexistent-wb-remote", "m")],
    "prism fit": [
        Bad("prism", "fit", "--name", "b", "--x", "{file}", "--z", "{file}"),
        Bad("prism", "fit", "--name", "b", "--x", "{file}"),
        Bad("prism", "fit", "--name", "b", "--source", "m", "--target", "m", "--text", "{file}"),
        Bad("prism", "fit", "--name", "b", "--x", "/no/x.safetensors", "--z", "/no/z.safetensors", store="missing"),
    ],
    "prism refit": [
        Bad("prism", "refit", "m", "--tiles", "1", "--x", "{file}", "--z", "{file}"),
        Bad("prism", "refit", "ghost", "--tiles", "1", "--text", "{file}"),
    ],
    "prism eval": [
        Bad("prism", "eval", "m", "--text", "{file}"),
        Bad("prism", "eval", "ghost", "--text", "{file}", store="missing"),
    ],
    "consolidate": [
        Bad("consolidate", "m", "-m", "nothing to do"),
        Bad("consolidate", "m", "--ema", "0.9", "--versions", "1..3", "-m", "v2 and v3 do not exist"),
        Bad("consolidate", "lo", "--ema", "0.9", "--versions", "1..1", "-m", "an adapter needs --as"),
        Bad("consolidate", "ghost", "--prune-keep", "0.5", "--parent", "m", "-m", "x"),
        Bad("consolidate", "m", "--prune-keep", "0.5", "--parent", "m", "-m", "x", store="missing"),
    ],
    "sign": [
        Bad("sign", "m"),
        Bad("sign", "m", "--key", "/definitely/missing.pem"),
        Bad("sign", "m", "--key", "{file}"),
        Bad("sign", "m", "--key", "{folder}"),
    ],
    "trust add": [
        Bad("trust", "add", "t", "/definitely/missing.pem"),
        Bad("trust", "add", "t", "{file}"),
        Bad("trust", "add", "../t", "{file}"),
    ],
    "trust ls": [Bad("trust", "ls", "extra"), Bad("trust", "ls", store="missing")],
    "trust rm": [Bad("trust", "rm", "ghost"), Bad("trust", "rm", "ghost", store="missing")],
    "scaffold add": [
        Bad("scaffold", "add", "{folder}", "--host", "m", "--name", "s"),  # a model folder, not seeds
        Bad("scaffold", "add", "/definitely/missing", "--host", "m", "--name", "s"),
        Bad("scaffold", "add", "{folder}", "--host", "lo", "--name", "s"),
        Bad("scaffold", "add", "{folder}", "--host", "m", "--name", "../up"),
        Bad("scaffold", "add", "{folder}", "--host", "m", "--name", "s", "--alpha", "1", "--shape", "linear"),
        Bad("scaffold", "add", "{folder}", "--name", "s"),
    ],
    "scaffold check": [Bad("scaffold", "check", "m"), Bad("scaffold", "check", "ghost")],
    "scaffold fuse": [Bad("scaffold", "fuse", "m"), Bad("scaffold", "fuse", "ghost"), Bad("scaffold", "fuse", "m@v1")],
    "scaffold prune": [Bad("scaffold", "prune", "lo"), Bad("scaffold", "prune", "ghost", store="missing")],
    "scaffold persist": [Bad("scaffold", "persist", "x"), Bad("scaffold", "persist", "ghost")],
}
# --require-signed [--trusted-key PEM] on the commands that take it: no key trusted, or a bad key file.
for _command, _args in (("audit", ("m",)), ("export", ("m", "{out}")), ("compose", ("m", "--dry-run")),
                        ("verify", ("m",)), ("pull", ("file:///nonexistent-wb-remote", "m"))):  # fmt: skip
    BAD_INPUT[_command] += [
        Bad(_command, *_args, "--require-signed"),
        Bad(_command, *_args, "--require-signed", "--trusted-key", "{file}"),
        Bad(_command, *_args, "--trusted-key", "{file}"),
    ]
BAD_INPUT["ingest"] += [Bad("ingest", "{folder}", "--name", "y", "--require-signed", "--trusted-key", "{file}")]


def command_paths(group: click.Group, prefix: str = "") -> Iterator[str]:
    """Every command of the group, sub-commands of groups as `remote add`."""
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if isinstance(command, click.Group):
            yield from command_paths(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}"


@pytest.fixture(scope="module")
def populated(tiny_folders, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A store with a base, an adapter and an expansion; a model folder; a plain file."""
    root = tmp_path_factory.mktemp("errors")
    store, folder = root / "store", tiny_folders("llama")
    lora = make_lora(folder, root / "lora", 0, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    runner = CliRunner()
    for args in (
        ["ingest", str(folder), "--name", "m"],
        ["ingest", str(lora), "--name", "lo", "--base", "m"],
        ["expand", "m", "--name", "x", "--depth", "3"],
    ):
        result = runner.invoke(cli, ["--store", str(store), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    (root / "plain.txt").write_text("base: [unclosed\n")
    return {"store": store, "folder": folder, "file": root / "plain.txt", "root": root}


def test_every_command_has_bad_input() -> None:
    missing = sorted(set(command_paths(cli)) - set(BAD_INPUT))
    assert not missing, f"add bad invocations of {missing} to BAD_INPUT"
    assert not set(BAD_INPUT) - set(command_paths(cli)), "BAD_INPUT names commands that do not exist"


CASES = [pytest.param(bad, id=" ".join(bad.args) + (f" [{bad.store} store]" if bad.store != "populated" else ""))
         for bads in BAD_INPUT.values() for bad in bads]  # fmt: skip


@pytest.mark.parametrize("bad", CASES)
def test_bad_input_is_one_line(bad: Bad, populated: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    store = populated["store"] if bad.store == "populated" else populated["root"] / "no-store-here"
    args = [
        a.format(folder=populated["folder"], out=populated["root"] / "out", file=populated["file"]) for a in bad.args
    ]
    for name, value in bad.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(populated["root"])
    before = snapshot(populated["store"])
    result = CliRunner().invoke(cli, ["--store", str(store), *args], catch_exceptions=False)
    assert result.exit_code != 0, result.output
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert not re.search(r"[0-9a-f]{64}", result.stderr), "name banks by their refs, not by 64-hex digests"
    assert snapshot(populated["store"]) == before
    assert not (populated["root"] / "out").exists() and (bad.store == "populated" or not store.exists())


def test_a_closed_stdout_exits_quietly_like_git(populated: dict[str, Path]) -> None:
    """`weightbank refs | head -0`: no `error: Broken pipe`, the status git gives (SIGPIPE)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before anything is written
    try:
        done = subprocess.run(
            [sys.executable, "-m", "weightbank", "--store", str(populated["store"]), "log", "m"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


def test_usage_errors_are_one_line_too(populated: dict[str, Path]) -> None:
    result = CliRunner().invoke(cli, ["--store", str(populated["store"]), "show"], catch_exceptions=False)
    assert result.exit_code == 2
    assert result.stderr == "error: Missing argument 'REF'. (see 'cli show --help')\n"


def test_a_missing_store_is_named_and_created_only_by_writers(populated: dict[str, Path], tiny_folders) -> None:
    missing = populated["root"] / "not-yet"
    runner = CliRunner()
    refs = runner.invoke(cli, ["--store", str(missing), "refs", "--json"], catch_exceptions=False)
    assert refs.exit_code == 1 and refs.stderr.startswith(f"error: no store at {missing}: ")
    assert not missing.exists()
    made = runner.invoke(cli, ["--store", str(missing), "ingest", str(tiny_folders("llama")), "--name", "m"])
    assert made.exit_code == 0 and json.loads(runner.invoke(cli, ["--store", str(missing), "refs", "--json"]).stdout)
