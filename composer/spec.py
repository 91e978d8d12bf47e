"""Composition manifests: read from JSON or YAML, validated against MES v1.

Manifests come from users, so reading them is strict and bounded: errors carry PyYAML's (or
the JSON parser's) line and column, a key given twice is refused (PyYAML would keep the last
silently), YAML aliases are limited to a small budget (an alias bomb of a kilobyte would
otherwise expand to gigabytes), and so are the size and nesting of a manifest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from weightbank.registry.errors import InputError
from weightbank.registry.manifests import validate
from weightbank.registry.names import looks_like_path
from weightbank.registry.naming import close_names
from weightbank.schemas import load as load_schema

SPEC_SUFFIXES = (".json", ".yaml", ".yml")
MAX_SPEC_BYTES = 1 << 20  # a composition is a few hundred bytes; a megabyte is generous
MAX_ALIASES = 32  # YAML `*alias` uses per manifest
MAX_VALUES = 100_000  # strings, numbers, lists and mappings in the loaded document
MAX_DEPTH = 64

if TYPE_CHECKING:
    from weightbank.registry.store import Store


def load_spec(spec: str | Path | dict[str, Any], store: Store | None = None) -> dict[str, Any]:
    """A composition manifest from a dict, a .json/.yaml file (a `Path`, or a string written as a
    path or ending in one of those suffixes), or a bank ref (any other string: the bank alone).
    A mergekit config (a document with `merge_method`) becomes its composition, its local model
    folders ingested into `store` (see `mergekit_import`).

    Raises InputError for unreadable files and SchemaError for invalid manifests.
    """
    if isinstance(spec, dict):
        document, where = spec, "composition"
    elif isinstance(spec, Path) or spec.endswith(SPEC_SUFFIXES) or looks_like_path(spec):
        path = Path(spec)
        if not path.is_file():
            raise InputError(f"{spec}: no such composition file")
        document, where = read_spec_text(_read_bounded(path), str(path), json_only=path.suffix == ".json"), str(path)
    else:
        document, where = {"mes_version": "1", "base": spec, "steps": []}, f"composition {spec}"
    if "merge_method" in document:
        if store is None:
            raise InputError(f"{where}: a mergekit config needs a store to resolve its models in")
        from .mergekit_import import import_mergekit

        document = import_mergekit(document, where, store).composition
    check_keys(document, where)
    validate(document, "composition", where if where.startswith("composition") else f"composition {where}")
    return document


def _read_bounded(path: Path) -> str:
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise InputError(f"{path}: {size:,} bytes is too large for a composition manifest (limit {MAX_SPEC_BYTES:,})")
    try:
        return path.read_text("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_spec_text(text: str, where: str, *, json_only: bool = False) -> dict[str, Any]:
    """Parse a composition manifest given as text (YAML, of which JSON is a subset; with
    `json_only`, JSON alone). `where` names the source in errors, e.g. `merge.yaml` or `<stdin>`."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        raise InputError(f"{where}: too large for a composition manifest (limit {MAX_SPEC_BYTES:,} bytes)")
    try:
        document = _parse_json(text, where) if json_only else _parse_yaml(text, where)
    except RecursionError:
        raise InputError(f"{where}: nested too deeply for a composition manifest") from None
    if not isinstance(document, dict):
        raise InputError(f"{where}: a composition manifest must be a mapping")
    _check_bounds(document, where)
    return document


def _parse_json(text: str, where: str) -> Any:
    def refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise InputError(f"{where}: not valid JSON: key {key!r} is given twice")
            result[key] = value
        return result

    try:
        return json.loads(text, object_pairs_hook=refuse_duplicates)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys and counting aliases."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"more than {MAX_ALIASES} aliases (*name): refused, as an alias bomb would be", mark
                )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark, f"key {key!r} is given twice", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, where: str) -> Any:
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise InputError(_yaml_message(exc, where)) from None
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]


def _yaml_message(exc: yaml.YAMLError, where: str) -> str:
    """`merge.yaml:3:5: not valid YAML: <problem> (<context>)`: PyYAML's own words and mark."""
    mark = getattr(exc, "problem_mark", None)
    place = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark is not None else where
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    return f"{place}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def _check_bounds(document: Any, where: str) -> None:
    """At most MAX_VALUES values, nested at most MAX_DEPTH deep (shared YAML nodes count
    each time they are reached, as the planner would reach them)."""
    count = 0
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        count += 1
        if count > MAX_VALUES:
            raise InputError(f"{where}: more than {MAX_VALUES:,} values: too large for a composition manifest")
        if depth > MAX_DEPTH:
            raise InputError(f"{where}: nested more than {MAX_DEPTH} deep: too deep for a composition manifest")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        pending.extend((child, depth + 1) for child in children)


def check_keys(document: dict[str, Any], where: str) -> None:
    """Name unknown top-level keys (a typo `step:` is not only "steps is required")."""
    known = sorted(load_schema("composition")["properties"])
    unknown = [key for key in document if key not in known]
    if unknown:
        key = unknown[0]
        raise InputError(
            f"{where}: unknown key {key!r}{close_names(str(key), known) or ' (known: ' + ', '.join(known) + ')'}"
        )
