"""The package's layers, read from its source: which subpackage may import which (docs/architecture.md).

Shared modules at the top (config, model, checkpoint, ...) import no subpackage; data is below evaluation; training
and inference sit on both and never import each other; serve is on top; the CLI imports anything, lazily.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from skimage.data import astronaut

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "ferkit"
SHARED = {
    "config",
    "architectures",
    "bundled",
    "model",
    "checkpoint",
    "runtime",
    "distributed",
    "plots",
    "atomic",
    "errors",
}
# What each layer may import besides the shared modules and itself.
ALLOWED = {
    "shared": set(),
    "data": set(),
    "evaluation": {"data"},
    "training": {"data", "evaluation"},
    "inference": {"data", "evaluation"},
    "serve": {"data", "evaluation", "inference"},
    # The package root re-exports CLASSES for `from ferkit import CLASSES`.
    "root": {"data"},
    "cli": {"data", "evaluation", "training", "inference", "serve"},
    "__main__": {"cli"},
}
# Imported at the import of ferkit.training and of ferkit.cli, these would make `ferkit train` pay for deployment.
HEAVY = ("onnx", "onnxruntime", "onnxscript", "fastapi", "uvicorn", "sklearn")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def layer(name: str) -> str:
    """The layer of a ferkit module: a subpackage's name, "shared", "root", "cli" or "__main__"."""
    parts = name.split(".")
    if len(parts) == 1:
        return "root"
    if parts[1] in SHARED:
        return "shared"
    return parts[1]


def ferkit_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module, line, at module level) for every ferkit import in a file, those inside functions included."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from ferkit.data import images` imports a module; `from .. import __version__` a name.
            targets = [f"{source}.{a.name}" if is_module(f"{source}.{a.name}") else source for a in node.names]
        else:
            continue
        found += [(t, node.lineno, id(node) in top_level) for t in targets if t.split(".")[0] == "ferkit"]
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def run_python(code: str) -> str:
    """What ``code`` prints, run by a fresh Python on this checkout's source (its imports start from nothing)."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_every_module_is_in_a_known_layer():
    assert MODULES, PACKAGE
    assert {layer(module_name(p)) for p in MODULES} <= set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_imports_follow_the_layers(path):
    importer = layer(module_name(path))
    allowed = ALLOWED[importer] | {"shared", "root", importer}  # any import of ferkit loads the root first
    wrong = [
        f"{path.relative_to(SRC)}:{line} imports {target} ({layer(target)})"
        for target, line, _ in ferkit_imports(path)
        if layer(target) not in allowed
    ]
    assert not wrong, "\n".join(wrong)


def test_the_cli_imports_only_shared_modules_at_start_up():
    eager = [
        f"cli.py:{line} imports {target} at module level; import it inside the command that needs it"
        for target, line, top in ferkit_imports(PACKAGE / "cli.py")
        if top and layer(target) != "shared"
    ]
    assert not eager, "\n".join(eager)


def test_the_command_lists_its_commands_and_the_package_imports_without_pytorch():
    # PyTorch takes about a second and a half to import: `ferkit --help` and a mistyped command answer at once.
    code = (
        "import sys\n"
        "import ferkit\n"
        "from ferkit.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('loaded:', 'torch' in sys.modules, ferkit.Config().arch, ferkit.CLASSES[0], 'torch' in sys.modules)"
    )
    stdout = run_python(code)
    assert "predict" in stdout and "serve" in stdout
    # Nothing loaded PyTorch before CLASSES was asked for; then the datasets did.
    assert stdout.strip().splitlines()[-1] == "loaded: False resnet18 Angry True"


def test_every_commands_help_answers_without_pytorch():
    # Each command's options and their defaults come from modules free of PyTorch (config, bundled, ...).
    from ferkit.cli import COMMANDS

    commands = [[name] for name in COMMANDS] + [["data", "check"], ["data", "faces"], ["data", "split"]]
    code = (
        "import contextlib, io, sys\n"
        "from ferkit.cli import main\n"
        f"for command in {commands!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        try:\n            main([*command, '--help'])\n        except SystemExit:\n            pass\n"
        "    print(' '.join(command), 'usage: ferkit' in out.getvalue(), 'torch' in sys.modules)\n"
    )
    stdout = run_python(code)
    assert stdout.splitlines() == [f"{' '.join(c)} True False" for c in commands]


@pytest.mark.slow
@pytest.mark.parametrize("module", ["ferkit.training", "ferkit.cli", "ferkit.inference.predict"])
def test_importing_leaves_export_serving_and_scikit_learn_unloaded(module):
    code = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    stdout = run_python(code)
    assert stdout.split() == [], f"import {module} loads {stdout.strip()}"


# What reading a photo must not import: each costs `ferkit predict PHOTO` and the server's start-up a third of a
# second to a second and a half, and only training, evaluation, ten-crop, plots or video tracking use them.
NOT_FOR_A_PHOTO = ("torchvision", "matplotlib", "scipy", "sklearn", "ferkit.inference.evaluate")


@pytest.mark.slow
def test_reading_a_photo_and_starting_the_server_import_no_training_or_plotting_library(tmp_path):
    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut()).save(photo)
    code = (
        "import sys, ferkit.serve.app\n"
        "from ferkit.cli import main\n"
        f"assert main(['predict', {str(photo)!r}]) == 0\n"
        f"print('loaded:', *(m for m in {NOT_FOR_A_PHOTO!r} if m in sys.modules))"
    )
    stdout = run_python(code)
    *answer, loaded = stdout.strip().splitlines()
    assert "astronaut.png: face 1 " in answer[0]
    assert loaded.split() == ["loaded:"]
