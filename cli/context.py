"""What every command shares: error handling, the Registry of this invocation, --json."""

from __future__ import annotations

from typing import IO, Any

import click


class UserFacingError(click.ClickException):
    """One line on stderr, exit status 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


class WeightbankGroup(click.Group):
    """Turns weightbank's own errors and filesystem errors into one clear line."""

    def invoke(self, ctx: click.Context) -> Any:
        from weightbank.registry.errors import WeightbankError

        try:
            return super().invoke(ctx)
        except WeightbankError as exc:
            raise UserFacingError(str(exc)) from None
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise UserFacingError(f"{exc.strerror or exc}{where}") from None


def registry(ctx: click.Context) -> Any:
    """The Registry for this invocation, made on first use."""
    state = ctx.find_root().obj
    if "registry" not in state:
        from weightbank.registry import Registry
        from weightbank.registry.progress import progress_wanted

        state["registry"] = Registry(state["store"], progress=progress_wanted(state["quiet"]))
    return state["registry"]


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
