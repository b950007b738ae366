"""Start-up time of the commands that run no model (target: under 1 s each), beside one that loads the
model stack, each the median of ``--runs`` runs of the installed ``defectscan`` in a fresh process.

``health`` and ``status`` ask an embedded Redis-compatible server (``worker.dev_redis``, the dev
extra's); ``models list`` reads an empty local registry.

    .venv/bin/python bench/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from defectscan.worker.dev_redis import DevRedis

BIN = Path(sys.executable).parent / "defectscan"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as registry, tempfile.TemporaryDirectory() as data:
        server = DevRedis(data)
        env = {**os.environ, "DEFECTSCAN_BROKER_URL": server.start(), "HF_HUB_OFFLINE": "1"}
        try:
            measure(env, registry, args.runs)
        finally:
            server.stop()


def measure(env: dict[str, str], registry: str, runs: int) -> None:
    commands = {
        "defectscan --help": ["--help"],
        "defectscan status ID": ["status", "batch-x"],
        "defectscan wait --help": ["wait", "--help"],
        "defectscan models list P": ["models", "list", "foil", "--registry", registry],
        "defectscan health": ["health"],
        "defectscan train --help (loads nothing)": ["train", "--help"],
    }
    print(f"{'command':<42} {'median s':>9} {'max s':>7}")
    for label, argv in commands.items():
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run([str(BIN), *argv], env=env, capture_output=True, timeout=120)
            times.append(time.perf_counter() - start)
        print(f"{label:<42} {statistics.median(times):>9.2f} {max(times):>7.2f}")
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import defectscan.pipeline.model"], env=env, capture_output=True, timeout=300
    )
    print(f"{'(for scale) import pipeline.model':<42} {time.perf_counter() - start:>9.2f}")


if __name__ == "__main__":
    main()
