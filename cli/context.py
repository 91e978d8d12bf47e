"""What every command shares: error handling, the Registry of this invocation, --json."""

from __future__ import annotations

import logging
import os
import sys
from typing import IO, Any

import click

# Commands that may bring a store into being (`prism fit` from activation files, `trust add`
# before a first pull); every other command needs one to exist.
CREATES_STORE = frozenset({"ingest", "pull", "remote add", "trust add", "demo", "prism fit"})
# The exit status of a process killed by SIGPIPE (128 + 13): what git gives for `git log | head`.
BROKEN_PIPE_STATUS = 141


class UserFacingError(click.ClickException):
    """One line on stderr, exit status 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


class OneLineUsageError(click.UsageError):
    """A usage error as one line (exit status 2), pointing at the command's --help."""

    def show(self, file: IO[Any] | None = None) -> None:
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"error: {self.format_message()}{hint}", err=True, file=file)


class WeightbankGroup(click.Group):
    """Turns weightbank's own errors, usage errors, filesystem and remote-service errors into
    one clear line, and a closed stdout (`| head`) into a quiet exit."""

    def invoke(self, ctx: click.Context) -> Any:
        from weightbank.registry.errors import WeightbankError

        from .external_errors import describe_external

        # huggingface_hub logs every retry of a failing request; the error that follows is enough.
        logging.getLogger("huggingface_hub.utils._http").setLevel(logging.ERROR)
        try:
            return super().invoke(ctx)
        except WeightbankError as exc:
            raise UserFacingError(str(exc)) from None
        except BrokenPipeError:
            silence_stdout()
            raise click.exceptions.Exit(BROKEN_PIPE_STATUS) from None
        except click.UsageError as exc:
            if isinstance(exc, OneLineUsageError) or type(exc).__name__ == "NoArgsIsHelpError":
                raise
            raise OneLineUsageError(exc.format_message(), exc.ctx) from None
        except click.ClickException:
            raise
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise UserFacingError(f"{exc.strerror or exc}{where}") from None
        except Exception as exc:
            message = describe_external(exc)
            if message is None:
                raise  # a bug: keep the traceback
            raise UserFacingError(message) from None


def silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing what is left cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (e.g. click's test runner)
        pass


def command_path(ctx: click.Context) -> str:
    """The command as typed after the program name, e.g. `remote add`."""
    names: list[str] = []
    while ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


def registry(ctx: click.Context, *, creates_store: bool = False) -> Any:
    """The Registry for this invocation, made on first use. A local store must exist, except
    for the commands that create one (CREATES_STORE) and for work that ingests (`creates_store`: a
    mergekit config's model folders)."""
    state = ctx.find_root().obj
    if "registry" not in state:
        from weightbank.registry import Registry
        from weightbank.registry.progress import progress_wanted
        from weightbank.registry.store import default_location

        location = state["store"] or default_location()
        if not creates_store and command_path(ctx) not in CREATES_STORE:
            _check_store_exists(location)
        state["registry"] = Registry(location, progress=progress_wanted(state["quiet"]))
    return state["registry"]


def _check_store_exists(location: str) -> None:
    """A local store location must be a folder (stores on fsspec URLs are not checked)."""
    from weightbank.registry.errors import InputError, NotFoundError

    if "://" in location and not location.startswith("file://"):
        return
    path = os.path.expanduser(location.removeprefix("file://"))
    if not os.path.exists(path):
        raise NotFoundError(
            f"no store at {path}: nothing has been stored there yet (ingest or pull creates one; "
            "--store or $WEIGHTBANK_HOME chooses another)"
        )
    if not os.path.isdir(path):
        raise InputError(f"--store {path}: not a folder")


def progress_enabled(ctx: click.Context) -> bool:
    """Whether long work shows progress bars (stderr is a terminal and no -q)."""
    from weightbank.registry.progress import progress_wanted

    return progress_wanted(ctx.find_root().obj["quiet"])


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
