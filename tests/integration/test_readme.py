"""The README's quick starts, run as a new user runs them: its command lines, read from the README's own
text, in a copy of the clone, with relative paths as written.

The local quick start's ``make demo`` runs in the copy (its ``.venv`` is this one, already installed; the
test stops if ``make`` would install again). ``make test`` is what CI runs, so it is not run again here.
The distributed quick start's shell 1 runs in the background and shell 2 after it; ``BATCH_ID`` is what
the line that prints it printed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def sh_block(heading: str) -> list[tuple[str, str]]:
    """The first ```sh block after ``heading``, as ``(command, comment)`` with continuations joined."""
    text = README[README.index(heading) :]
    block = text[text.index("```sh\n") + 6 :]
    block = block[: block.index("```")]
    joined = re.sub(r"\\\n\s*", "", block)
    lines = []
    for line in joined.splitlines():
        command, _, comment = line.partition(" # ")
        if command.strip():
            lines.append((command.strip(), comment.strip()))
    return lines


def test_the_blocks_are_read_as_written() -> None:
    local = sh_block("## Quick start")
    assert [c for c, _ in local] == ["make demo", "make test"]
    distributed = sh_block("### Distributed batches")
    assert distributed[1] == (
        "defectscan local-cluster cluster/",
        "shell 1: broker, S3 store, one worker; Ctrl-C stops all",
    )
    assert any(c.startswith("defectscan enqueue ") and "--template" in c for c, _ in distributed)


def _copy_of_the_clone(folder: Path) -> Path:
    """The clone's tracked files (links as links), with this checkout's installed ``.venv``."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source, target = ROOT / name, folder / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    (folder / ".venv").symlink_to(ROOT / ".venv")
    return folder


def _clean_env(folder: Path) -> dict[str, str]:
    """A user's shell: none of the tests' broker or S3 variables; models cached in the copy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEFECTSCAN_", "AWS_", "VIRTUAL_ENV"))}
    return env | {"DEFECTSCAN_CACHE": str(folder / ".cache"), "HF_HUB_OFFLINE": "1"}


def _calls(results: Path, truth: Path) -> list[tuple[bool, bool]]:
    """(defective by the ground truth, anomalous by the verdict) for every instance of every sheet."""
    calls = []
    for path in sorted(results.glob("sheet_*.png.json")):
        sheet = json.loads((truth / path.name.replace(".png", "")).read_text())
        for instance in json.loads(path.read_text())["instances"]:
            x, y, w, h = instance["box"]
            nearest = min(
                sheet["instances"],
                key=lambda t: abs(t["centre"][0] - x - w / 2) + abs(t["centre"][1] - y - h / 2),
            )
            calls.append((nearest["defect"] is not None, instance["is_anomalous"]))
    return calls


@pytest.mark.slow
def test_the_quick_starts_run_as_written(tmp_path: Path) -> None:
    clone = _copy_of_the_clone(tmp_path / "defectscan")
    env = _clean_env(clone)
    stale = subprocess.run(["make", "-q", ".venv/.installed"], cwd=clone, env=env)
    assert stale.returncode == 0, "the .venv is older than pyproject.toml: run `make install` first"

    # the local quick start
    (make_demo, _), _ = sh_block("## Quick start")
    demo = subprocess.run(
        ["bash", "-c", make_demo], cwd=clone, env=env, capture_output=True, text=True, timeout=900
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "pip install" not in demo.stdout  # nothing installed again
    results, truth = clone / "demo-output" / "results", clone / "demo-output" / "data" / "truth"
    summary = json.loads((results / "summary.json").read_text())
    assert summary["images"] == 8 and summary["instances"] == 64 and not summary["failures"]
    defective = summary["verdicts"].get("defect", 0)  # pictures of defective sheets only, by default
    assert defective and len(list(results.glob("sheet_*.png.heatmap.png"))) == defective
    page = (results / "report.html").read_text()  # the run's page, with the model's operating point
    assert "expected false-reject rate" in page and page.count("sheet_") >= 8
    local_calls = _calls(results, truth)
    assert len(local_calls) == 64 and any(d for d, _ in local_calls)
    assert all(d == a for d, a in local_calls), local_calls  # every good one ok, every defect found

    # the distributed quick start: shell 1 in the background, then shell 2
    lines = sh_block("### Distributed batches")
    each = [c for c, note in lines if note.startswith("in each shell")]
    shell_1 = [c for c, note in lines if note.startswith("shell 1")]
    shell_2 = [(c, note) for c, note in lines if c not in each + shell_1]
    assert each and len(shell_1) == 1 and shell_2
    log = (tmp_path / "shell-1.log").open("wb")
    cluster = subprocess.Popen(
        ["bash", "-c", "\n".join([*each, f"exec {shell_1[0]}"])],
        cwd=clone,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (clone / "cluster" / "cluster.env").is_file() and cluster.poll() is None:
            assert time.monotonic() < deadline, (tmp_path / "shell-1.log").read_text()
            time.sleep(0.3)
        assert cluster.poll() is None, (tmp_path / "shell-1.log").read_text()
        script = ["set -e", *each]
        for command, note in shell_2:
            command = re.sub(r"\bBATCH_ID\b", '"$BATCH_ID"', command)
            script.append(f"BATCH_ID=$({command})" if "prints BATCH_ID" in note else command)
        script.append('echo "batch: $BATCH_ID"')
        second = subprocess.run(
            ["bash", "-c", "\n".join(script)], cwd=clone, env=env, capture_output=True, text=True, timeout=900
        )
        assert second.returncode == 0, second.stderr[-3000:] + (tmp_path / "shell-1.log").read_text()[-3000:]
        assert "healthy" in second.stdout and "Traceback" not in second.stderr
        batch_id = second.stdout.strip().splitlines()[-1].removeprefix("batch: ")
        batch = clone / "cluster" / "results" / batch_id
        assert (batch / "_SUCCESS").is_file()
        assert json.loads((batch / "summary.json").read_text())["images"] == 8
        assert _calls(batch / "items", truth) == local_calls  # the same calls as the local run
    finally:
        os.killpg(cluster.pid, signal.SIGINT)  # Ctrl-C in shell 1
        code = cluster.wait(90)
    assert code == 0 and not (clone / "cluster" / "cluster.env").exists()
