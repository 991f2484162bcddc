"""The package's layers, as CONTRIBUTING.md states them, hold in every import of helpers/."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "helpers"
FOUNDATION = {"models", "data", "results", "plotting"}
PURE_ALGORITHMS = {"quantizer", "pruning", "obs", "stats", "protect"}  # (weight, statistics, settings) -> (weight, info)
ALLOWED = {  # layer -> layers it may import
    "foundation": {"foundation"},
    "compression": {"foundation", "compression"},
    "evaluation": {"foundation", "evaluation"},
    "claims": {"foundation", "evaluation", "claims"},
    "experiments": {"foundation", "compression", "evaluation", "claims", "experiments"},
    "running": {"foundation", "compression", "evaluation", "claims", "experiments", "running"},
}


def module_name(path: Path) -> list[str]:
    return ["helpers", *path.relative_to(PACKAGE).with_suffix("").parts]


def layer_of(parts: list[str]) -> str:
    if len(parts) < 2 or parts[1] in FOUNDATION or parts[1] in ("__init__", "__main__"):
        return "foundation" if len(parts) > 1 and parts[1] in FOUNDATION else "package"
    return parts[1]


def imported(path: Path) -> list[list[str]]:
    """Every helpers module `path` imports (relative imports resolved), as dotted parts."""
    own = module_name(path)
    package = own[:-1]  # the package a relative import starts from (also for an __init__.py)
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "helpers":
                target = node.module.split(".")
            else:
                continue
            out.append(target)
        elif isinstance(node, ast.Import):
            out += [alias.name.split(".") for alias in node.names if alias.name.split(".")[0] == "helpers"]
    return out


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_imports_only_the_layers_below_it(path):
    own = module_name(path)
    layer = layer_of(own)
    if layer == "package":
        return  # helpers/__init__.py and __main__.py sit above everything
    for target in imported(path):
        other = layer_of(target)
        assert other in ALLOWED[layer], f"{'.'.join(own)} ({layer}) imports {'.'.join(target)} ({other})"
        own_figures = len(target) > 2 and own[-1] == f"{target[2]}_figures"  # an experiment's figures read its tables
        if layer == "experiments" and own[-1] != "core" and other == "experiments" and not own_figures:
            assert target[:3] == ["helpers", "experiments", "core"], \
                f"{'.'.join(own)} imports another experiment's internals ({'.'.join(target)}); use experiments.core"
        if layer == "compression" and own[-1] in PURE_ALGORITHMS:
            assert other == "compression" and target[2] in PURE_ALGORITHMS | {"storage"}, \
                f"the algorithm {'.'.join(own)} imports {'.'.join(target)}: algorithms know no models, data or engine"


def test_the_layer_map_sees_every_module():
    layers = {layer_of(module_name(p)) for p in MODULES}
    assert layers == {"package", "foundation", "compression", "evaluation", "claims", "experiments", "running"}
    assert len(MODULES) > 30
