"""The module layout, checked by walking every import in the package (lazy ones inside functions too).

A stage (`tokenizers/`, `vocoder/`, `engine/`) is built from folder paths and never reaches up to the checkpoint
layout, the server, the pipeline, the tiny-bundle writers or the tools; the checkpoint layout imports no stage.
So one stage can be read and changed without the others, and without the code that wires them together.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "spiritserve"
STAGES = ("spiritserve.tokenizers", "spiritserve.vocoder", "spiritserve.engine")
ABOVE_THE_STAGES = (
    "spiritserve.checkpoints", "spiritserve.server", "spiritserve.tiny", "spiritserve.pipeline", "spiritserve.cli",
    "spiritserve.tools", "spiritserve.bench", "spiritserve.precision", "spiritserve.batch_check", "spiritserve.chat",
    "spiritserve.soak",
)  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[tuple[int, str]]:
    return imports_in(path.read_text(), path)


def imports_in(source: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in `source`, the text of `path`; `from a import b` yields both `a` and
    `a.b` (b may be a module), and relative imports are resolved against the file's package."""
    package = module_name(path).split(".")[: None if path.name == "__init__.py" else -1]
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parent = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join([*parent, *([node.module] if node.module else [])])
            yield node.lineno, base
            yield from ((node.lineno, f"{base}.{alias.name}") for alias in node.names)


def is_within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def offending_imports(importers: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    """`file:line imports module`, one line per offending import statement."""
    found: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if not is_within(module_name(path), importers):
            continue
        for line, module in imports(path):
            place = f"{path.relative_to(PACKAGE.parent)}:{line}"
            if is_within(module, forbidden) and len(module) < len(found.get(place, module + ".")):
                found[place] = module
    return [f"{place} imports {module}" for place, module in found.items()]


def test_stages_import_nothing_above_them():
    offending = offending_imports(STAGES, ABOVE_THE_STAGES)
    assert not offending, "a stage imports a module above the stages:\n" + "\n".join(offending)


def test_the_checkpoint_layout_imports_no_stage():
    offending = offending_imports(("spiritserve.checkpoints",), STAGES)
    assert not offending, "spiritserve.checkpoints imports a stage:\n" + "\n".join(offending)


def test_the_walk_sees_every_kind_of_import():
    """The checks above are only as good as the walk: plain, from, relative and lazy imports all count."""
    source = (
        "import spiritserve.server.app\nfrom spiritserve import tiny\nfrom ..checkpoints import X\n"
        "def later():\n    from spiritserve.pipeline import SpiritPipeline\n"
    )
    found = {module for _, module in imports_in(source, PACKAGE / "vocoder" / "example.py")}
    assert {"spiritserve.server.app", "spiritserve.tiny", "spiritserve.checkpoints", "spiritserve.pipeline"} <= found
