"""`lineage` output in each format, including drawings made by Graphviz's `dot`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from typing import Any

import click

from .output import print_json

LINEAGE_FORMATS = ("text", "json", "dot", "mermaid", "prov", "svg", "png")


def print_lineage(graph: Any, fmt: str) -> None:
    """Print a lineage graph as `fmt` (one of LINEAGE_FORMATS)."""
    from weightbank.registry import provenance

    if fmt == "json":
        print_json(provenance.to_json(graph))
    elif fmt == "prov":
        print_json(provenance.to_prov(graph))
    elif fmt == "dot":
        click.echo(provenance.render_dot(graph))
    elif fmt == "mermaid":
        click.echo(provenance.render_mermaid(graph))
    elif fmt in ("svg", "png"):
        _draw(provenance.render_dot(graph), fmt)
    else:
        click.echo(provenance.render_text(graph))


def _draw(dot_source: str, fmt: str) -> None:
    from weightbank.registry.errors import InputError

    dot = shutil.which("dot")
    if dot is None:
        raise InputError(
            f"--format {fmt} needs Graphviz's dot on PATH (apt install graphviz, brew install graphviz); "
            "--format dot prints the graph for it"
        )
    if fmt == "png" and sys.stdout.isatty():
        raise InputError("--format png writes binary image data: redirect it to a file (> lineage.png)")
    done = subprocess.run([dot, f"-T{fmt}"], input=dot_source.encode("utf-8"), capture_output=True, check=False)
    if done.returncode != 0:
        reason = " ".join(done.stderr.decode("utf-8", "replace").split()) or f"exit status {done.returncode}"
        raise InputError(f"Graphviz's dot could not draw the lineage: {reason}")
    sys.stdout.flush()
    sys.stdout.buffer.write(done.stdout)
    sys.stdout.buffer.flush()
