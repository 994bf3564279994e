"""The packages depend one way (core <- featurestore <- metrics <- decoder <- compare, api), read from the imports."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import cellgap

ROOT = Path(cellgap.__file__).parent
# what each package may import from cellgap, besides itself
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "featurestore": {"core"},
    "metrics": {"core", "featurestore"},
    "decoder": {"core", "featurestore", "metrics"},
    "compare": {"core", "featurestore", "metrics", "decoder"},
    "api": {"core", "featurestore", "metrics", "decoder"},
}


def _imports(path: Path) -> list[str]:
    """Every cellgap module a file imports, at the top or inside functions."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import submodule` depends on the submodule, not on the package's __init__
            names.extend(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in _MODULES
                         else node.module for alias in node.names)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return [name for name in names if name.startswith("cellgap.")]


def _module(path: Path) -> str:
    return ".".join(("cellgap", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")


_MODULES = {_module(path) for path in ROOT.rglob("*.py")}


def _graph() -> dict[str, set[str]]:
    return {_module(path): set(_imports(path)) for path in ROOT.rglob("*.py")}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package):
    wrong = [(module, target) for module, targets in _graph().items() if module.split(".")[1:2] == [package]
             for target in targets if target.split(".")[1] not in ALLOWED[package] | {package}]
    assert not wrong, f"{package} imports above its layer: {wrong}"


def test_no_module_imports_itself_round_a_circle():
    graph = {module: {t for t in targets if t in _MODULES} for module, targets in _graph().items()}
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        seen[module] = 1
        for target in graph.get(module, ()):
            if seen.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in seen:
                visit(target, path + [target])
        seen[module] = 2

    for module in graph:
        if module not in seen:
            visit(module, [module])


def test_inference_imports_no_training_code():
    inference = ("cellgap.decoder.predictor", "cellgap.decoder.predict", "cellgap.decoder.inference")
    graph = _graph()
    reached, todo = set(), list(inference)
    while todo:
        module = todo.pop()
        if module in reached:
            continue
        reached.add(module)
        todo.extend(t for t in graph.get(module, ()) if t in graph)
    assert not [m for m in reached if m.startswith("cellgap.decoder.training")]


def test_store_info_and_evaluate_run_without_torch(tmp_path):
    """The store's read path and the metrics import neither torch nor timm."""
    from cellgap.featurestore.encoders import EncoderSettings
    from cellgap.featurestore.extract.config import ExtractConfig
    from cellgap.featurestore.extract.job import run_extraction

    store = tmp_path / "s.zarr"
    run_extraction(ExtractConfig(dataset="synthetic:4,seed=1", store=str(store), progress=False, batch_size=4,
                                 encoder=EncoderSettings(name="convnext_atto", pretrained=False)))
    script = (
        "import sys\n"
        "from cellgap.cli import main\n"
        f"assert main(['store', 'info', {str(store)!r}]) == 0\n"
        f"gt = 'store:{store},split=train'\n"
        "assert main(['evaluate', '--gt', gt, '--pred', gt]) == 0\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
