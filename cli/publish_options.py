"""The options `export` takes when it publishes to a URL (hf://ORG/REPO, s3://BUCKET/PREFIX)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def publish_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--revision`, `--private`, `--create` (hf:// only) and `-m` (the commit message)."""
    for option in reversed(
        [
            click.option(
                "--revision", metavar="BRANCH", help="hf://: the branch to commit to (made from main if new) [main]."
            ),
            click.option("--private", is_flag=True, help="hf://: the repo must be private (--create makes it so)."),
            click.option("--create", is_flag=True, help="hf://: create the repo if it does not exist."),
            click.option("-m", "--message", default="", help="hf://: the commit message."),
        ]
    ):
        command = option(command)
    return command
