"""Every ferkit command the user-facing documents show parses with today's command line, every benchmark script they
name exists, and their Python examples use names that exist: a renamed flag, script or method breaks this test, not a
reader's first try."""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

from ferkit.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "MODEL_CARD.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`((?:ferkit|python) [^`]+)`")
SCRIPT = re.compile(r"\bbenchmarks/[\w./-]+\.(?:py|sh)\b")


def commands(text: str) -> list[tuple[str, bool]]:
    """The shell commands of a document, each with whether it is inline code: the lines of each fenced shell block
    (continuations joined), then inline code, which may name a command without the arguments it needs."""
    found = []
    for lang, body in FENCE.findall(text):
        if lang in ("bash", "sh", "shell", ""):
            found += [(line, False) for line in body.replace("\\\n", " ").splitlines()]
    found += [(span, True) for span in INLINE.findall(text)]
    parts = [(part.strip(), inline) for line, inline in found for part in line.split("&&")]
    return [(part, inline) for part, inline in parts if part and not part.startswith("#")]


def ferkit_argv(command: str) -> list[str] | None:
    """The arguments after ``ferkit`` (or ``python -m ferkit``/``torchrun ... -m ferkit``), else None."""
    words = shlex.split(command, comments=True)
    for i, word in enumerate(words):
        if word == "ferkit" and (i == 0 or words[i - 1] == "-m"):
            return words[i + 1 :]
    return None


def doc_cases():
    for doc in DOCS:
        for command, inline in commands(doc.read_text()):
            yield pytest.param(doc.name, command, inline, id=f"{doc.name}: {command[:60]}")


CASES = list(doc_cases())


def test_the_documents_show_commands():
    # The extraction itself: the README's first command and a fenced block's continued line are found.
    found = [case.values[1] for case in CASES]
    assert any(c.startswith("ferkit train --preset quick") for c in found)
    assert any("--rdzv_backend c10d" in c and "--sync-bn" in c for c in found)
    assert sum(ferkit_argv(c) is not None for c in found) >= 50
    assert any(SCRIPT.search(c) for c in found)


def unknown_flags(argv: list[str]) -> list[str]:
    """The ``--flags`` of ``argv`` that its (sub)command does not have."""
    parser, words = build_parser(argv[:1]), list(argv)
    while words:
        sub = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not sub or words[0] not in sub[0].choices:
            break
        parser = sub[0].choices[words.pop(0)]
    return [w for w in words if w.startswith("--") and w.split("=")[0] not in parser._option_string_actions]


@pytest.mark.parametrize(("doc", "command", "inline"), CASES)
def test_documented_command_parses(doc, command, inline, capsys):
    argv = ferkit_argv(command)
    if argv is not None and (inline or "--help" in argv):
        # Prose names a command or a flag (`ferkit data faces`, `ferkit predict --camera`) without all it needs, and
        # --help would print and exit: their flags must exist.
        assert not unknown_flags(argv), f"{doc}: `{command}`: {' '.join(unknown_flags(argv))} no longer exist"
    elif argv is not None:
        try:
            build_parser(argv[:1]).parse_args(argv)
        except SystemExit:
            error = capsys.readouterr().err.strip().splitlines()[-1]
            pytest.fail(f"{doc}: `{command}` no longer parses: {error}")
    for script in SCRIPT.findall(command):
        assert (ROOT / script).is_file(), f"{doc}: `{command}` names {script}, which does not exist"


def test_a_wrong_flag_is_caught(capsys):
    # The checks can fail: a flag ferkit does not have is refused by the parse and named by the inline check.
    with pytest.raises(SystemExit):
        build_parser(["predict"]).parse_args(["predict", "photo.jpg", "--no-such-flag"])
    assert unknown_flags(["data", "faces", "--out", "x", "--no-such-flag=1"]) == ["--no-such-flag=1"]
    assert unknown_flags(["predict", "--camera"]) == []


def python_blocks() -> list[tuple[str, str]]:
    return [(doc.name, body) for doc in DOCS for lang, body in FENCE.findall(doc.read_text()) if lang == "python"]


def python_problems(body: str) -> list[str]:
    """What a Python example uses that does not exist: names it imports, and what it calls on a Predictor, a Result
    or a Face (the variables the examples name ``predictor``, ``result`` and ``face``)."""
    from ferkit.inference import Predictor
    from ferkit.inference.results import Face, Result

    objects = {"predictor": Predictor, "result": Result, "face": Face}
    problems = []
    for node in ast.walk(ast.parse(body)):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            problems += [f"{node.module}.{a.name}" for a in node.names if not hasattr(module, a.name)]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in objects:
            owner = objects[node.value.id]
            if not (hasattr(owner, node.attr) or node.attr in getattr(owner, "__dataclass_fields__", {})):
                problems.append(f"{owner.__name__}.{node.attr}")
    return problems


@pytest.mark.parametrize(("doc", "body"), python_blocks(), ids=lambda v: v[:40])
def test_documented_python_names_exist(doc, body):
    assert not python_problems(body), f"{doc}: its Python example uses {python_problems(body)}, which do not exist"


def test_a_wrong_python_name_is_caught():
    bad = "from ferkit.inference import Nope\nresult = predictor.predict_nothing('a.jpg')\nprint(face.box, face.mood)"
    assert python_problems(bad) == ["ferkit.inference.Nope", "Predictor.predict_nothing", "Face.mood"]
