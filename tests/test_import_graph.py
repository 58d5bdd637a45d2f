"""The import graph (issue 15): packages import one way, no module imports itself back,
and every import names the installed namespace (``shopsearch.api``, never bare ``api``).

Every ``import`` of every module counts, at the top and inside functions alike (a lazy
import is still a dependency, only a hidden one). The layers, lowest first:

- ``retrieval``: imports none of the others;
- ``rerank``: ``retrieval`` only;
- ``indexer``: ``retrieval``; its ``training`` sub-package also ``rerank`` (the models it
  trains), the rest of ``indexer`` does not;
- ``api``: the three above, never ``eval`` (``eval`` registers its commands through an
  entry point; see ``api.cli.mount_plugins``);
- ``eval``: everything, but only ``api.cli_common`` of the CLI (``api.cli`` mounts eval,
  so importing it back would close a loop through the entry point).
"""

from __future__ import annotations

import ast
import graphlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("retrieval", "rerank", "indexer", "api", "eval")
NAMESPACE = "shopsearch."
ALLOWED: dict[str, set[str]] = {
    "retrieval": set(),
    "rerank": {"retrieval"},
    "indexer": {"retrieval"},
    "indexer.training": {"retrieval", "rerank", "indexer"},
    "api": {"retrieval", "rerank", "indexer"},
    "eval": {"retrieval", "rerank", "indexer", "api"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in its body)."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = _module_name(path)
            targets: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    targets.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    targets.add(node.module)
                    targets.update(f"{node.module}.{alias.name}" for alias in node.names)
            bare = sorted(t for t in targets if t.split(".")[0] in PACKAGES)
            assert not bare, f"{name} imports {bare}: import them as shopsearch.<package>"
            # The installed namespace (pyproject's package-dir): shopsearch.api is api/.
            graph[name] = {t.removeprefix(NAMESPACE) for t in targets if t.startswith(NAMESPACE)}
    return graph


GRAPH = _imports()


def _layer(module: str) -> str:
    return "indexer.training" if module.startswith("indexer.training") else module.split(".")[0]


def test_the_graph_was_read() -> None:
    assert len(GRAPH) > 100 and "api.cli" in GRAPH and "indexer.training.towers" in GRAPH


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_packages_import_one_way(layer: str) -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _layer(module) == layer
        for target in targets
        if target.split(".")[0] != module.split(".")[0]
        and target.split(".")[0] not in ALLOWED[layer]
    )
    assert not wrong, wrong


def test_only_training_on_the_batch_side_imports_the_scorers() -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.startswith("indexer") and not module.startswith("indexer.training")
        for target in targets
        if target.startswith("rerank")
    )
    assert not wrong, wrong


def test_eval_imports_no_cli_module_but_the_shared_one() -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.startswith("eval")
        for target in targets
        if target.startswith(("api.cli", "api.cli_train", "api.cli_events"))
        and not target.startswith("api.cli_common")
    )
    assert not wrong, wrong


def test_no_module_imports_itself_back() -> None:
    modules = set(GRAPH)
    edges: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        # ``from a.b import c``: c is a module when it is one, else a name in a.b.
        resolved = {t if t in modules else t.rsplit(".", 1)[0] for t in targets}
        # A package's __init__ re-exporting its own modules is not a loop of substance.
        edges[module] = {
            r for r in resolved & modules if r != module and not r.startswith(f"{module}.")
        }
    try:
        tuple(graphlib.TopologicalSorter(edges).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import loop: {' -> '.join(exc.args[1])}") from exc


def test_every_package_folder_is_installed_in_the_namespace() -> None:
    """pyproject.toml lists the installed packages by hand (package-dir maps
    ``shopsearch.<folder>`` to ``<folder>``): a new sub-package missing from the list
    would work in a checkout and be absent from a wheel."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    folders = {
        NAMESPACE + ".".join(init.parent.relative_to(ROOT).parts)
        for package in PACKAGES
        for init in (ROOT / package).rglob("__init__.py")
    }
    assert listed == folders
