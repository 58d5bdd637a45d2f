"""``shopsearch rules apply|show|history``: merchandising rules from a file.

A typer sub-app, mounted by :mod:`api.cli` as ``app.add_typer(rules_app, name="rules")``.
The commands work on the rule store of ``--index-dir`` (``Settings.merch_rules_dir``:
``$SHOPSEARCH_MERCH_DIR``, else ``<index-dir>/merch``) directly, so they need no server; a
running server serves a new version from its next search on (it checks the store's
``CURRENT`` on every search). The file format and what rules do: :mod:`rerank.merchandising`;
versions and the audit log: :mod:`indexer.merch_rules`.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from shopsearch.api.cli_common import IndexDirOption, console, fail, settings_from_options
from shopsearch.indexer.merch_rules import RulesError, RulesStore
from shopsearch.indexer.snapshot import SnapshotStore
from shopsearch.rerank.merch_rule_model import RuleSet, describe_change
from shopsearch.rerank.merchandising import Rulebook

__all__ = ["read_rule_file", "rules_app"]

rules_app = typer.Typer(
    help="Merchandising rules (pin, boost, bury, hide): apply a file, show, history.",
    no_args_is_help=True,
)


def _store(index_dir: Path | None) -> tuple[RulesStore[Rulebook], Path]:
    settings = settings_from_options(index_dir)
    return RulesStore(settings.merch_rules_dir, Rulebook.parse), settings.index_dir


def read_rule_file(path: Path) -> RuleSet:
    """The rule set in JSON file ``path``, validated as ``PUT /v1/admin/rules`` validates
    it. Raises ``ValueError`` naming each bad rule's index and field
    (``rules[3].pin.position: ...``), or the file's problem."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} cannot be read as JSON: {exc}") from exc
    try:
        return RuleSet.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            loc = list(error["loc"])
            where = "rules" if not loc else str(loc[0])
            for part in loc[1:]:
                where += f"[{part}]" if isinstance(part, int) else f".{part}"
            problems.append(f"  {where}: {error['msg']}")
        raise ValueError(
            f"{path} has bad rules (nothing applied):\n" + "\n".join(problems)
        ) from exc


@rules_app.command("apply")
def apply_command(
    file: Annotated[Path, typer.Argument(help='JSON file: {"rules": [...]}.')],
    index_dir: IndexDirOption = None,
    actor: Annotated[
        str | None,
        typer.Option(help="Who makes the change, for the audit log. Default: your user name."),
    ] = None,
) -> None:
    """Replace the rule set with FILE's (validated first: a bad rule applies nothing)."""
    try:
        ruleset = read_rule_file(file)
    except ValueError as exc:
        raise fail(exc, code=2) from exc
    store, idx = _store(index_dir)
    try:
        stored = store.put(
            ruleset.model_dump(mode="json", exclude_defaults=True),
            actor=actor or _user(),
            describe=lambda old, new: describe_change(old.ruleset, new.ruleset),
            index_version=SnapshotStore(idx).current(),
        )
    except (OSError, ValueError) as exc:
        raise fail(exc) from exc
    change = stored.change
    console.print(
        f"rules version {stored.version} (was {stored.previous}): "
        f"{change.get('rules_after', len(ruleset.rules))} rules, "
        f"{len(change.get('added', []))} added, {len(change.get('removed', []))} removed"
    )


@rules_app.command("show")
def show_command(
    index_dir: IndexDirOption = None,
    version: Annotated[
        int | None, typer.Option(min=0, help="A stored version; default: the serving one.")
    ] = None,
) -> None:
    """Print a rule set (the serving one by default) as the JSON file `apply` takes back;
    its version and author go to stderr."""
    store, _ = _store(index_dir)
    try:
        stored = store.current() if version is None else store.get(version)
    except RulesError as exc:
        raise fail(exc) from exc
    console.print(  # stderr: stdout is the file itself
        f"rules version {stored.version}"
        + (f", by {stored.actor} at {stored.created_at}" if stored.version else "")
        + (f" (snapshot {stored.index_version})" if stored.index_version else "")
    )
    out: dict[str, Any] = {"rules": stored.document.get("rules", [])}
    typer.echo(json.dumps(out, indent=2, ensure_ascii=False))


@rules_app.command("history")
def history_command(
    index_dir: IndexDirOption = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Entries to show.")] = 20,
) -> None:
    """The audit log, newest first: who changed the rules, when, and what changed."""
    store, _ = _store(index_dir)
    table = Table(title=f"rule changes in {store.root}")
    for col in ("version", "at", "actor", "snapshot", "rules", "added", "removed"):
        table.add_column(col)
    for entry in store.history(limit):
        change = entry.get("change", {})
        table.add_row(
            str(entry.get("version")),
            str(entry.get("at")),
            str(entry.get("actor")),
            str(entry.get("index_version") or ""),
            f"{change.get('rules_before', '?')} -> {change.get('rules_after', '?')}",
            "\n".join(change.get("added", [])),
            "\n".join(change.get("removed", [])),
        )
    Console().print(table)  # stdout: the table is the answer


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a bare container)
        return "cli"
