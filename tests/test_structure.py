"""The package's shape: no import cycles, and a command line that answers mistakes before torch loads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import lpdask

PACKAGE = Path(lpdask.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The lpdask modules ``path`` imports, at load time or inside functions (a deferred import is a
    dependency too), leaving out those under ``if TYPE_CHECKING``. ``from package import module``
    depends on the module only; ``from package import name`` on the package."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("lpdask")}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
            if not target.startswith("lpdask"):
                continue
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
    return found


def test_the_package_has_no_import_cycles() -> None:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in imports_of(path, set(modules)) if m in modules and m != name}
             for name, path in modules.items()}
    assert len(graph) > 20 and graph["lpdask.cli"], "the graph was not read"
    cycles, state = [], {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                cycles.append(trail[trail.index(other):] + [other] if other in trail else [name, other])
            elif other not in state:
                visit(other, [*trail, other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def answer(folder: Path, *args: str) -> tuple[int, str, list[str]]:
    """Run the command in a fresh process: its exit code, its stderr, and which of the heavy
    libraries it had imported by the time it answered."""
    probe = (f"import sys\nfrom lpdask.cli import main\ncode = main({list(args)!r})\n"
             "print(sorted(m for m in ('numpy', 'zarr', 'tifffile', 'torch') if m in sys.modules))\nsys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=folder, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stderr.strip(), ast.literal_eval(done.stdout.strip())


def test_a_missing_input_is_answered_before_torch_is_imported(tmp_path: Path) -> None:
    code, message, loaded = answer(tmp_path, "upscale", "missing.tif", "out.zarr")
    assert (code, message) == (2, "lpdask: error: input not found: missing.tif")
    assert "torch" not in loaded
    assert list(tmp_path.iterdir()) == []


def test_a_bad_option_is_answered_before_numpy_zarr_or_torch_load(tmp_path: Path) -> None:
    code, message, loaded = answer(tmp_path, "upscale", "in.tif", "out.zarr", "--chunk", "8")
    assert (code, message) == (2, "lpdask: error: --chunk 8 is out of range (16 to 8192 pixels)")
    assert loaded == []
