"""Commands that do not run a model start without torch, anomalib, OpenCV, SciPy, scikit-learn or
OpenVINO, and nothing third-party warns."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "anomalib", "timm", "lightning", "matplotlib", "cv2", "scipy", "sklearn", "openvino")

RUN = """
import json, sys
from defectscan.producer.cli import cli
for args in json.loads(sys.argv[1]):
    try:
        cli.main(args, prog_name="defectscan", standalone_mode=False)
    except BaseException as exc:  # a command's own failure (no broker here) is not what is measured
        print(type(exc).__name__, file=sys.stderr)
print(json.dumps(sorted(m for m in {heavy} if m in sys.modules)))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_fast_commands_import_neither_torch_nor_anomalib(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens: the commands fail fast
    commands = [
        ["--help"],
        ["status", "--help"],
        ["wait", "--help"],
        ["models", "list", "--help"],
        ["health", "--help"],
        ["health"],
        ["status", "batch-x"],
        ["models", "list", "foil", "--registry", str(tmp_path / "registry")],
    ]
    env = {"DEFECTSCAN_BROKER_URL": dead, "DEFECTSCAN_REDIS_WAIT_S": "0", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", RUN.format(heavy=HEAVY), json.dumps(commands)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert "Warning" not in proc.stderr


def test_importing_the_models_raises_no_third_party_warning() -> None:
    code = "import defectscan.pipeline.model, defectscan.pipeline.inspection, defectscan.pipeline.pairs"
    proc = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-W", "error::DeprecationWarning", "-c", code],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == ""
