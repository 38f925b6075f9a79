"""The dependency direction app -> index_builder -> model holds in the source."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"model": {"app", "index_builder"}, "index_builder": {"app"}}


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_points_back(package):
    for path in (ROOT / package).rglob("*.py") if (ROOT / package).is_dir() else []:
        bad = imported_packages(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


# Rooms inside the packages and what each may import of ours (a room imports itself too).
# The network (model/*.py) imports nothing of ours; the libraries never import the CLI.
ROOMS = {
    "model": set(),
    "model.training": {"model"},
    "model.features": {"model"},
    "model.synth": {"model"},
    "index_builder": set(),  # the package docstring
    "index_builder.errors": set(),
    "index_builder.format": {"model", "index_builder.errors"},
    "index_builder.search": {"model", "model.features", "index_builder.errors",
                             "index_builder.format"},
    "index_builder.build": {"model", "model.features", "index_builder.errors",
                            "index_builder.format", "index_builder.search"},
    "index_builder.bench": {"model", "index_builder.format", "index_builder.build",
                            "index_builder.search"},
    "app": {"model", "model.features", "model.synth", "model.training", "index_builder"},
    "app.cli": {"model", "index_builder", "app"},
}  # fmt: skip
SUBROOMS = {"model": ("training", "features", "synth"), "app": ("cli",)}


def room_of(module: str) -> str:
    """model.features.extract -> model.features; model.chan -> model; app.cli.x -> app.cli."""
    parts = module.split(".")
    if parts[0] == "index_builder":
        return ".".join(parts[:2])
    if len(parts) > 1 and parts[1] in SUBROOMS.get(parts[0], ()):
        return ".".join(parts[:2])
    return parts[0]


def imported_modules(path: Path) -> set[str]:
    """Our modules imported anywhere in the file (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in ("model", "index_builder", "app")}


def allowed(target: str, rules: set[str]) -> bool:
    return any(target == rule or target.startswith(rule + ".") for rule in rules)


def source_files() -> list[Path]:
    return sorted(p for package in ("model", "index_builder", "app")
                  for p in (ROOT / package).rglob("*.py"))  # fmt: skip


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_each_room_imports_only_the_rooms_below_it(path):
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    room = room_of(module)
    assert room in ROOMS, f"{module}: room {room} has no rule in ROOMS"
    bad = {t for t in imported_modules(path)
           if room_of(t) != room and not allowed(room_of(t), ROOMS[room])}  # fmt: skip
    assert not bad, f"{path.relative_to(ROOT)} ({room}) imports {sorted(bad)}"


def test_the_room_rules_catch_an_upward_import():
    assert room_of("model.features.extractors.base") == "model.features"
    assert room_of("index_builder.format.reader") == "index_builder.format"
    assert room_of("model.scoring") == "model" and room_of("app.cli.index") == "app.cli"
    assert not allowed(room_of("index_builder.build.writer"), ROOMS["index_builder.format"])
    assert not allowed(room_of("model.training.train"), ROOMS["model"])
    assert not allowed(room_of("app.cli"), ROOMS["app"])
    assert allowed(room_of("index_builder.format.layout"), ROOMS["index_builder.search"])


def test_model_package_is_checked():
    assert any((ROOT / "model").rglob("*.py"))


def test_readme_opens_with_the_demo_and_the_test_command():
    """The README's first code block holds exactly two commands, the demo and the tests,
    and CI runs the second one."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert text.index("```bash") < text.index("##")  # before any section
    assert "bash scripts/test.sh" in (root / ".ci" / "run").read_text()
    for script in ("demo.sh", "test.sh", "setup.sh"):
        assert (root / "scripts" / script).is_file()


# A reader that stops at its first match (`grep -q`, `head`, `grep -m N`) behind a pipe:
# under `set -o pipefail` the writer dies of SIGPIPE and the pipeline fails at random.
EARLY_EXIT_READER = re.compile(r"\|\s*(grep\b[^|]*\s-[A-Za-z]*[qm]|head\b|sed\b[^|]*\dq)")


def shell_scripts() -> list[Path]:
    folders = ("scripts", "docker", "benchmarks", ".ci")
    found = [p for folder in folders for p in (ROOT / folder).rglob("*") if p.is_file()]
    return sorted(p for p in found if p.suffix == ".sh" or p.name in ("run", "Dockerfile"))


def test_the_shell_scripts_are_found():
    names = {p.name for p in shell_scripts()}
    assert {"test.sh", "smoke_runtime.sh", "setup.sh", "run", "Dockerfile"} <= names


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_early_exit_reader_behind_a_pipe(script):
    """Capture first, then test (a file or a variable): deterministic under pipefail."""
    joined = script.read_text().replace("\\\n", " ")  # continuation lines are one command
    bad = [line.strip() for line in joined.splitlines()
           if EARLY_EXIT_READER.search(line) and not line.lstrip().startswith("#")]  # fmt: skip
    assert not bad, f"{script.relative_to(ROOT)}: {bad}"


def test_the_early_exit_check_catches_the_pattern():
    assert EARLY_EXIT_READER.search("docker logs x 2>&1 | grep -q -i -E 'a|b'")
    assert EARLY_EXIT_READER.search("cmd | head -1")
    assert EARLY_EXIT_READER.search("cmd | grep -m1 x")
    assert not EARLY_EXIT_READER.search("grep -q 'x' \"$WORK/container.log\"")
    assert not EARLY_EXIT_READER.search("cmd | grep --line-buffered -E '^Step'")
