"""Provenance: who made each bank, from what, with which operator.

Every bank manifest carries `provenance.parents` (digest + role) and
`provenance.activity` (operator, parameters, tool, time, agent). This module makes those
activity records and walks parents into a lineage graph, rendered as a text tree, JSON,
Graphviz dot, Mermaid, or W3C PROV-JSON.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from typing import TYPE_CHECKING, Any

from .digest import short
from .errors import WeightbankError
from .naming import names_by_target

if TYPE_CHECKING:
    from .store import Store

ENV_AGENT = "WEIGHTBANK_AGENT"


def utc_now() -> str:
    """Current UTC time, ISO 8601 with a Z suffix, to the second."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def current_agent() -> str:
    """Who is acting, as recorded in provenance and ref logs (which travel to shared remotes):
    `$WEIGHTBANK_AGENT`, else git's `user.email`, else the login name — never the host name."""
    return os.environ.get(ENV_AGENT) or _git_email() or _login()


@cache
def _git_email() -> str | None:
    try:
        found = subprocess.run(
            ["git", "config", "--get", "user.email"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def tool_version() -> str:
    from weightbank import __version__

    return f"weightbank {__version__}"


def new_activity(operator: str, parameters: dict[str, Any], message: str = "") -> dict[str, Any]:
    """An activity record for a bank manifest."""
    activity: dict[str, Any] = {
        "operator": operator,
        "parameters": parameters,
        "tool": tool_version(),
        "time": utc_now(),
        "agent": current_agent(),
    }
    if message:
        activity["message"] = message
    return activity


def parents_of(document: dict[str, Any]) -> list[dict[str, str]]:
    """The manifests a manifest was made from, as `{"digest", "role"}` records."""
    return list(document.get("provenance", {}).get("parents", []))


@dataclass
class LineageNode:
    """A manifest in a lineage graph. `manifest` is None when it is missing or unreadable."""

    digest: str
    manifest: dict[str, Any] | None
    names: list[str] = field(default_factory=list)
    problem: str | None = None

    @property
    def label(self) -> str:
        if self.manifest is None:
            return f"{short(self.digest)} ({self.problem})"
        kind = self.manifest.get("type", self.manifest["kind"])
        names = f" [{', '.join(self.names)}]" if self.names else ""
        activity = self.manifest.get("provenance", {}).get("activity")
        made = f" — {activity['operator']} by {activity['agent']} at {activity['time']}" if activity else ""
        return f"{short(self.digest)} {kind}{names}{made}"

    @property
    def parents(self) -> list[dict[str, str]]:
        return [] if self.manifest is None else parents_of(self.manifest)


@dataclass
class Lineage:
    """The provenance DAG reachable from `root` through parents."""

    root: str
    nodes: dict[str, LineageNode]

    def edges(self) -> list[tuple[str, str, str]]:
        """(child, parent, role) triples."""
        return [(d, p["digest"], p["role"]) for d, node in self.nodes.items() for p in node.parents]


def build_lineage(store: Store, root: str) -> Lineage:
    """Walk parents from `root`; missing or unreadable manifests become nodes with a problem."""
    names = names_by_target(store)
    nodes: dict[str, LineageNode] = {}
    pending = [root]
    while pending:
        digest = pending.pop()
        if digest in nodes:
            continue
        try:
            manifest: dict[str, Any] | None = store.manifests.get(digest)
            problem = None
        except WeightbankError as exc:
            manifest, problem = None, str(exc)
        node = LineageNode(digest, manifest, names.get(digest, []), problem)
        nodes[digest] = node
        pending.extend(parent["digest"] for parent in node.parents)
    return Lineage(root, nodes)


def render_text(lineage: Lineage) -> str:
    """An indented tree; a node reached twice is printed once and referred to after."""
    lines: list[str] = []
    seen: set[str] = set()

    def visit(digest: str, prefix: str, connector: str, role: str) -> None:
        node = lineage.nodes[digest]
        role_text = f"{role}: " if role else ""
        again = digest in seen
        lines.append(f"{prefix}{connector}{role_text}{node.label if not again else short(digest) + ' (see above)'}")
        if again:
            return
        seen.add(digest)
        child_prefix = prefix + ("" if not connector else ("    " if connector.startswith("└") else "│   "))
        parents = node.parents
        for i, parent in enumerate(parents):
            last = i == len(parents) - 1
            visit(parent["digest"], child_prefix, "└── " if last else "├── ", parent["role"])

    visit(lineage.root, "", "", "")
    return "\n".join(lines)


def to_json(lineage: Lineage) -> dict[str, Any]:
    """Nodes and edges as plain data."""
    nodes = []
    for digest, node in lineage.nodes.items():
        item: dict[str, Any] = {"digest": digest, "names": node.names}
        if node.manifest is None:
            item["problem"] = node.problem
        else:
            item["kind"] = node.manifest["kind"]
            item["type"] = node.manifest.get("type")
            item["activity"] = node.manifest.get("provenance", {}).get("activity")
        nodes.append(item)
    edges = [{"child": c, "parent": p, "role": r} for c, p, r in lineage.edges()]
    return {"root": lineage.root, "nodes": nodes, "edges": edges}


def dot_string(text: str) -> str:
    """A Graphviz quoted string: only `"` is escaped in DOT, and a backslash starts an escape
    in labels, so both are escaped; everything else (UTF-8, e.g. an em dash) is kept as is."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def render_dot(lineage: Lineage) -> str:
    """Graphviz: children point at their parents, edges labelled by role."""
    lines = ["digraph lineage {", "  rankdir=BT;", "  node [shape=box, fontname=monospace];"]
    for digest, node in lineage.nodes.items():
        style = ", style=dashed, color=red" if node.manifest is None else ""
        lines.append(f"  {dot_string(digest)} [label={dot_string(node.label)}{style}];")
    for child, parent, role in lineage.edges():
        lines.append(f"  {dot_string(child)} -> {dot_string(parent)} [label={dot_string(role)}];")
    lines.append("}")
    return "\n".join(lines)


def _mermaid_text(text: str) -> str:
    """Text inside a Mermaid label: its markup characters as entity codes."""
    for char, code in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;"), ("|", "#124;")):
        text = text.replace(char, code)
    return text


def render_mermaid(lineage: Lineage) -> str:
    """A Mermaid flowchart (GitHub and the Hub render it in Markdown): children point at parents."""
    ids = {digest: f"n{i}" for i, digest in enumerate(lineage.nodes)}
    lines = ["graph BT"]
    for digest, node in lineage.nodes.items():
        lines.append(f'  {ids[digest]}["{_mermaid_text(node.label)}"]')
    for child, parent, role in lineage.edges():
        lines.append(f"  {ids[child]} -->|{_mermaid_text(role)}| {ids[parent]}")
    missing = [ids[d] for d, node in lineage.nodes.items() if node.manifest is None]
    if missing:
        lines += ["  classDef missing stroke:#f00,stroke-dasharray:5 5", f"  class {','.join(missing)} missing"]
    return "\n".join(lines)


def to_prov(lineage: Lineage) -> dict[str, Any]:
    """W3C PROV-JSON: manifests are entities, the activities that made them activities,
    agents the people or services that ran them."""
    prefix = {"wb": "https://weightbank.dev/ns#", "blake3": "urn:blake3:"}
    entity: dict[str, Any] = {}
    activity: dict[str, Any] = {}
    agent: dict[str, Any] = {}
    generated: dict[str, Any] = {}
    used: dict[str, Any] = {}
    derived: dict[str, Any] = {}
    associated: dict[str, Any] = {}
    for digest, node in lineage.nodes.items():
        entity_id = "blake3:" + digest.split(":", 1)[1]
        attributes: dict[str, Any] = {"wb:names": node.names}
        if node.manifest is None:
            entity[entity_id] = {**attributes, "wb:problem": node.problem}
            continue
        entity[entity_id] = {**attributes, "wb:kind": node.manifest["kind"], "wb:type": node.manifest.get("type", "")}
        made = node.manifest.get("provenance", {}).get("activity")
        if made is None:
            continue
        activity_id = f"wb:activity-{digest.split(':', 1)[1][:16]}"
        activity[activity_id] = {
            "prov:type": f"wb:{made['operator']}",
            "prov:endTime": made["time"],
            "wb:tool": made["tool"],
            "wb:parameters": json.dumps(made["parameters"], sort_keys=True),
        }
        agent_id = f"wb:agent-{made['agent']}"
        agent[agent_id] = {"prov:type": "prov:Person", "prov:label": made["agent"]}
        generated[f"_:gen-{activity_id}"] = {"prov:entity": entity_id, "prov:activity": activity_id}
        associated[f"_:assoc-{activity_id}"] = {"prov:activity": activity_id, "prov:agent": agent_id}
        for parent in node.parents:
            parent_id = "blake3:" + parent["digest"].split(":", 1)[1]
            used[f"_:use-{activity_id}-{parent_id}"] = {
                "prov:activity": activity_id,
                "prov:entity": parent_id,
                "prov:role": f"wb:{parent['role']}",
            }
            derived[f"_:der-{entity_id}-{parent_id}"] = {
                "prov:generatedEntity": entity_id,
                "prov:usedEntity": parent_id,
                "prov:activity": activity_id,
            }
    return {
        "prefix": prefix,
        "entity": entity,
        "activity": activity,
        "agent": agent,
        "wasGeneratedBy": generated,
        "used": used,
        "wasDerivedFrom": derived,
        "wasAssociatedWith": associated,
    }
