"""Imports run one way: producer -> worker -> pipeline; pipeline touches no queue, broker or S3 client."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "pipeline": {"worker", "producer", "celery", "redis", "kombu", "boto3", "botocore", "pytorch_lightning"},
    "worker": {"producer", "pytorch_lightning"},
    "producer": {"pytorch_lightning"},
}


def _root(module: str) -> str:
    """``defectscan.worker.app`` -> ``worker``; ``celery.app`` -> ``celery``."""
    parts = module.split(".")
    return parts[1] if parts[0] == "defectscan" and len(parts) > 1 else parts[0]


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {_root(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(_root(node.module))
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package} has no modules"
    for path in files:
        bad = _imported_roots(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_importing_pipeline_loads_no_shell_libraries() -> None:
    code = (
        "import sys, defectscan.pipeline.segment, defectscan.pipeline.synth, defectscan.pipeline.images;"
        "print(sorted(m for m in ('celery','redis','boto3','kombu') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_every_setting_is_read_in_one_module_and_listed_in_the_readme() -> None:
    from defectscan.worker.settings import Settings, env_name

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration") :]
    for name, field in Settings.model_fields.items():
        assert f"| `{env_name(name)}` |" in table and str(field.description) in table, name
    readers = [
        path.relative_to(ROOT).as_posix()
        for folder in ("pipeline", "worker", "producer")
        for path in (ROOT / folder).rglob("*.py")
        if "os.environ.get(" in path.read_text() or "os.getenv(" in path.read_text()
    ]
    # only worker/settings.py reads the environment: our settings through pydantic-settings, and the
    # AWS variables boto3 reads itself, only to tell its clients apart
    assert readers == ["worker/settings.py"]


def test_the_code_imports_its_packages_through_defectscan() -> None:
    """The repository's folders are importable from the source tree, but only ``defectscan`` is
    installed: an import of ``pipeline.x`` would work here and fail for every user."""
    offenders = [
        path.relative_to(ROOT).as_posix()
        for folder in ("pipeline", "worker", "producer", "tests", "bench")
        for path in (ROOT / folder).rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] in FORBIDDEN
        )
        or (isinstance(node, ast.Import) and any(a.name.split(".")[0] in FORBIDDEN for a in node.names))
    ]
    assert offenders == []


def test_the_wheel_installs_one_import_name(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("defectscan-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"defectscan"}
    for package in ("pipeline", "worker", "producer"):  # the folders' modules, as files
        assert f"defectscan/{package}/__init__.py" in names
    assert "defectscan/pipeline/model.py" in names and "defectscan/producer/cli.py" in names


def test_the_readme_table_of_exit_statuses_is_the_codes() -> None:
    from defectscan.producer.cli import cli
    from defectscan.producer.exits import COMMANDS, markdown_table

    assert markdown_table() in (ROOT / "README.md").read_text()  # python -m defectscan.producer.exits
    assert set(COMMANDS) <= set(cli.commands)  # type: ignore[attr-defined]


def _module_imports(path: Path, package: str) -> set[str]:
    """The ``defectscan`` modules a module imports at its top level (``if TYPE_CHECKING`` blocks too)."""
    found = set()
    tree = ast.parse(path.read_text())
    nodes = [n for node in tree.body for n in ([node, *node.body] if isinstance(node, ast.If) else [node])]
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package):
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(package)}
    return found


def test_no_module_imports_itself_through_others() -> None:
    modules = {
        f"defectscan.{folder}.{path.stem}": path
        for folder in ("pipeline", "worker", "producer")
        for path in (ROOT / folder).glob("*.py")
        if path.stem != "__init__"
    }
    graph = {name: _module_imports(path, "defectscan.") & set(modules) for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done

    def walk(name: str, path: list[str]) -> None:
        state[name] = 1
        for other in sorted(graph[name]):
            assert state.get(other) != 1, " -> ".join([*path[path.index(other) :], other])
            if other not in state:
                walk(other, [*path, other])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
