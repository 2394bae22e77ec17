"""The import layers of docs/architecture.md, checked on the source: a module may import its own
package and the layers below it, never one above (no arrow runs back up), and billing imports
neither the stream processors nor the agent."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# lowest first; a package may import its own layer's packages only where listed as peers
LAYERS: tuple[tuple[str, ...], ...] = (
    ("schemas",),
    ("lake",),  # the usage lake's storage (a folder or a bucket), shared by the sink and billing
    ("billing.common",),
    ("billing.pricing",),
    ("billing.ledger",),
    ("billing.usage", "billing.leases"),
    ("billing.market",),
    ("billing.invoicing",),
    ("billing.payments", "billing.readmodel", "billing.spend"),
    ("billing.reconcile", "billing.statements"),
    ("billing.reports", "billing.close"),
    ("billing.web",),
    ("billing.cli", "billing.cli_runner"),
)
# the agent: contracts only; the stream processors: contracts and the lake's storage
APART = {"agents": {"schemas"}, "streams": {"schemas", "lake"}}


def _place(module: str) -> tuple[int, str] | None:
    """The layer and the package of `module`, or None for a module LAYERS does not place."""
    for rank, packages in enumerate(LAYERS):
        for package in packages:
            if module == package or module.startswith(package + "."):
                return rank, package
    return None


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _is_cli(module: str) -> bool:
    """A package's command-line adapter (billing/<package>/cli.py) sits at the CLI layer."""
    return module.split(".")[-1] in ("cli", "statement_cli") or module.startswith("billing.cli")


def _violations(root: Path = ROOT) -> list[str]:
    out = []
    for top in ("schemas", "lake", "agents", "streams", "billing"):
        for path in sorted((root / top).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            module = _module_name(path, root)
            for line, imported in _imports(path):
                head = imported.split(".")[0]
                where = f"{path.relative_to(root)}:{line} imports {imported}"
                if top in APART:
                    if head in ("schemas", "lake", "agents", "streams", "billing", "deploy") and head not in APART[
                        top
                    ] | {top}:
                        out.append(where)
                    continue
                if head in ("agents", "streams", "deploy", "bench", "tests"):
                    out.append(where)
                    continue
                if head not in ("schemas", "lake", "billing"):
                    continue
                mine = (len(LAYERS) - 1, "") if _is_cli(module) else _place(module)
                theirs = _place(imported)
                if mine is None or theirs is None:
                    if imported != "billing":
                        out.append(f"{where} (a package docs/architecture.md does not place)")
                    continue
                beside = theirs[0] == mine[0] and theirs[1] != mine[1] and not _is_cli(module)
                if theirs[0] > mine[0] or beside:
                    out.append(f"{where} (layer {theirs[0]} above or beside layer {mine[0]})")
    return out


def test_no_import_runs_back_up_the_layers() -> None:
    assert _violations() == []


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("billing/pricing/probe.py", "from billing.invoicing import service\n"),
        ("billing/usage/probe.py", "import streams.sink\n"),
        ("agents/probe.py", "from billing.pricing import money\n"),
        ("billing/ledger/probe.py", "from billing.web.api import app\n"),
    ],
)
def test_the_check_sees_a_forbidden_import(tmp_path: Path, path: str, source: str) -> None:
    probe = tmp_path / path
    probe.parent.mkdir(parents=True)
    probe.write_text(source)
    assert [v.split(":")[0] for v in _violations(tmp_path)] == [path]


@pytest.mark.parametrize("package", [p for layer in LAYERS for p in layer if not p.startswith("billing.cli")])
def test_every_layer_exists(package: str) -> None:
    assert (ROOT / Path(*package.split("."))).is_dir(), f"{package} is in LAYERS but not in the tree"
