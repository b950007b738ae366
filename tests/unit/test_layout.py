"""Imports run one way: producer -> worker -> pipeline; pipeline touches no queue, broker or S3 client."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "pipeline": {"worker", "producer", "celery", "redis", "kombu", "boto3", "botocore", "pytorch_lightning"},
    "worker": {"producer", "pytorch_lightning"},
    "producer": {"pytorch_lightning"},
}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
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
        "import sys, pipeline.segment, pipeline.synth, pipeline.images, pipeline.geometry;"
        "print(sorted(m for m in ('celery','redis','boto3','kombu') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_every_setting_is_read_in_one_module_and_listed_in_the_readme() -> None:
    from worker.settings import Settings, env_name

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
    assert readers == []  # only worker/settings.py reads the environment (through pydantic-settings)
