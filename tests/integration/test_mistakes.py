"""A user's usual mistakes, command by command: one line that says what to do, no traceback, and the
exit status the README's table gives (``producer/exits.py``). A bug prints one line too, naming the log
that holds its traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from defectscan.pipeline.images import encode_png
from defectscan.pipeline.synth import reference_template
from defectscan.producer import batch_cli, synth_files
from defectscan.producer.cli import cli
from defectscan.producer.exits import ANY_COMMAND, COMMANDS, Exit
from defectscan.worker.dev_redis import free_port
from defectscan.worker.settings import CLIENT_ENV
from tests.stand_in import stand_in_model

BIN = Path(sys.executable).parent / "defectscan"
NO_BROKER = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
UNREACHABLE_S3 = {
    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
    "AWS_ACCESS_KEY_ID": "key",
    "AWS_SECRET_ACCESS_KEY": "not-a-secret",
    "AWS_REGION": "us-east-1",
    "DEFECTSCAN_S3_MAX_ATTEMPTS": "1",
}


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]  # {root}: a folder of fixtures (below); {model}: a model directory
    status: Exit
    says: str  # a part of the one line
    broker: bool = False  # a broker that answers (else: nothing listens at DEFECTSCAN_BROKER_URL)
    env: tuple[tuple[str, str], ...] = ()


S3 = tuple(UNREACHABLE_S3.items())
CASES = [
    Case("inspect-missing-input", ("inspect", "{root}/nope", "--model", "{model}", "--out", "{root}/o"),
         Exit.USAGE, "does not exist"),
    Case("inspect-empty-input", ("inspect", "{root}/empty", "--model", "{model}", "--out", "{root}/o"),
         Exit.USAGE, "holds no images"),
    Case("inspect-missing-model", ("inspect", "{root}/images", "--model", "{root}/nomodel", "--out",
         "{root}/o"), Exit.NOT_FOUND, "not a defectscan model"),
    Case("inspect-bad-option", ("inspect", "{root}/images", "--model", "{model}", "--out", "{root}/o",
         "--min-area", "x"), Exit.USAGE, "--min-area"),
    Case("inspect-no-model-option", ("inspect", "{root}/images", "--out", "{root}/o"),
         Exit.USAGE, "give INPUT_DIR and --model"),
    Case("segment-missing-template", ("segment", "{root}/images", "--template", "{root}/nope.png",
         "--out", "{root}/o"), Exit.USAGE, "nope.png"),
    Case("train-missing-input", ("train", "--ok", "{root}/nope", "--out", "{root}/m"),
         Exit.USAGE, "nope"),
    Case("train-empty-input", ("train", "--ok", "{root}/empty", "--out", "{root}/m"),
         Exit.USAGE, "no readable OK images"),
    Case("train-bad-option", ("train", "--ok", "{root}/images", "--target-frr", "2", "--out", "{root}/m"),
         Exit.USAGE, "--target-frr"),
    Case("train-unreachable-s3", ("train", "--manifest", "s3://lines/foil/train.manifest", "--out",
         "{root}/m"), Exit.UNAVAILABLE, "s3://lines/foil/train.manifest", env=S3),
    Case("evaluate-missing-model", ("evaluate", "--model", "{root}/nomodel", "--data", "{root}"),
         Exit.NOT_FOUND, "nomodel"),
    Case("evaluate-unreachable-s3", ("evaluate", "--model", "{model}", "--manifest",
         "s3://lines/foil/test.manifest"), Exit.UNAVAILABLE, "s3://lines/foil/test.manifest", env=S3),
    Case("evaluate-no-data", ("evaluate", "--model", "{model}"), Exit.USAGE, "--data"),
    Case("enqueue-unreachable-broker", ("enqueue", "{root}/images", "--model", "{model}", "--out",
         "{root}/r"), Exit.UNAVAILABLE, "DEFECTSCAN_BROKER_URL"),
    Case("enqueue-missing-input", ("enqueue", "{root}/nope", "--model", "{model}", "--out", "{root}/r"),
         Exit.USAGE, "no such folder", broker=True),
    Case("enqueue-empty-input", ("enqueue", "{root}/empty", "--model", "{model}", "--out", "{root}/r"),
         Exit.USAGE, "holds no images", broker=True),
    Case("enqueue-missing-model", ("enqueue", "{root}/images", "--model", "{root}/nomodel", "--out",
         "{root}/r"), Exit.NOT_FOUND, "nomodel", broker=True),
    Case("enqueue-no-such-registry", ("enqueue", "{root}/images", "--model", "{root}/noreg/foil@latest",
         "--out", "{root}/r"), Exit.NOT_FOUND, "LATEST", broker=True),
    Case("enqueue-unreachable-s3", ("enqueue", "s3://lines/2026-12-01/", "--model", "{model}", "--out",
         "{root}/r"), Exit.UNAVAILABLE, "s3://lines", broker=True, env=S3),
    Case("enqueue-bad-option", ("enqueue", "{root}/images", "--model", "{model}", "--out", "{root}/r",
         "--chunk", "0"), Exit.USAGE, "--chunk"),
    Case("wait-unknown-batch", ("wait", "no-such-batch"), Exit.NOT_FOUND, "check the id", broker=True),
    Case("wait-unknown-batch-in-storage", ("wait", "no-such-batch", "--out", "{root}/r"),
         Exit.NOT_FOUND, "no batch 'no-such-batch'"),
    Case("wait-unreachable-s3", ("wait", "b1", "--out", "s3://lines/results/"),
         Exit.UNAVAILABLE, "s3://lines/results", env=S3),
    Case("wait-bad-option", ("wait", "b1", "--timeout", "soon"), Exit.USAGE, "--timeout"),
    Case("status-unknown-batch", ("status", "no-such-batch"), Exit.NOT_FOUND, "check the id", broker=True),
    Case("status-unknown-retrain", ("status", "retrain-nope"), Exit.NOT_FOUND, "retrain-nope", broker=True),
    Case("status-no-batch-id", ("status",), Exit.USAGE, "BATCH_ID"),
    Case("status-unreachable-broker", ("status", "b1"), Exit.UNAVAILABLE, "DEFECTSCAN_BROKER_URL"),
    Case("retrain-unreachable-broker", ("retrain", "foil", "--ok", "{root}/images", "--registry",
         "{root}/reg"), Exit.UNAVAILABLE, "DEFECTSCAN_BROKER_URL"),
    Case("retrain-no-registry", ("retrain", "foil", "--ok", "{root}/images"), Exit.USAGE,
         "DEFECTSCAN_REGISTRY"),
    Case("retrain-bad-option", ("retrain", "foil", "--ok", "x", "--promote", "sometimes"),
         Exit.USAGE, "--promote"),
    Case("models-no-such-registry", ("models", "list", "foil", "--registry", "{root}/noreg"),
         Exit.NOT_FOUND, "no registry here"),
    Case("models-unknown-product", ("models", "list", "bar", "--registry", "{root}/reg"),
         Exit.NOT_FOUND, "products: foil"),
    Case("models-no-registry", ("models", "list", "foil"), Exit.USAGE, "DEFECTSCAN_REGISTRY"),
    Case("models-unreachable-s3", ("models", "list", "foil", "--registry", "s3://lines/models"),
         Exit.UNAVAILABLE, "s3://lines/models", env=S3),
    Case("review-missing-run", ("review", "{root}/norun", "--set", "a.png=correct"),
         Exit.NOT_FOUND, "no run here"),
    Case("review-bad-decision", ("review", "{root}/norun", "--set", "a.png=maybe"),
         Exit.USAGE, "maybe"),
    Case("review-unreachable-s3", ("review", "s3://lines/results/b1", "--set", "a.png=correct"),
         Exit.UNAVAILABLE, "s3://lines/results/b1", env=S3),
    Case("report-unreachable-s3", ("report", "s3://lines/results/b1"), Exit.UNAVAILABLE,
         "s3://lines/results/b1", env=S3),
    Case("report-bad-option", ("report", "{root}/norun", "--expires-h", "0"), Exit.USAGE, "--expires-h"),
    Case("threshold-unreachable-s3", ("threshold", "s3://lines/models/foil@latest", "--target-frr", "0.05"),
         Exit.UNAVAILABLE, "s3://lines/models", env=S3),
    Case("report-missing-run", ("report", "{root}/norun"), Exit.NOT_FOUND, "no run here"),
    Case("threshold-missing-model", ("threshold", "{root}/nomodel", "--target-frr", "0.05"),
         Exit.NOT_FOUND, "nomodel"),
    Case("threshold-no-such-registry", ("threshold", "{root}/noreg/foil@latest", "--target-frr", "0.05"),
         Exit.NOT_FOUND, "LATEST"),
    Case("threshold-bad-option", ("threshold", "{model}", "--target-frr", "0.9"), Exit.USAGE,
         "--target-frr"),
    Case("local-cluster-not-a-folder", ("local-cluster", "{root}/images/a.png"), Exit.USAGE, "is a file"),
]  # fmt: skip


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images, an empty folder, a model and a registry with one product; everything else is missing."""
    folder = tmp_path_factory.mktemp("mistakes")
    (folder / "images").mkdir()
    (folder / "empty").mkdir()
    (folder / "images" / "a.png").write_bytes(encode_png(reference_template()))
    stand_in_model(folder / "model")
    stand_in_model(folder / "reg" / "foil" / "v1", "v1")
    return folder


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A broker that is down is found down in a second (a user waits FIRST_CONTACT_S)."""
    monkeypatch.setattr(batch_cli, "FIRST_CONTACT_S", 0.5)
    monkeypatch.setenv("DEFECTSCAN_REDIS_WAIT_S", "0.5")
    yield


def _one_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_mistake_gets_one_line_and_its_exit_status(
    case: Case, root: Path, quick: None, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # whatever an earlier test left in the environment (the session's `env` fixture sets a broker
    # and an S3 store): a broker that answers only where the case says, no S3 but the case's own
    monkeypatch.setenv("DEFECTSCAN_BROKER_URL", redis_url if case.broker else NO_BROKER)
    for name in (*CLIENT_ENV, "DEFECTSCAN_REGISTRY", "DEFECTSCAN_S3_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    for key, value in case.env:
        monkeypatch.setenv(key, value)
    args = [a.format(root=root, model=root / "model") for a in case.args]
    result = CliRunner().invoke(cli, args)
    line = _one_line(result)
    assert result.exit_code == case.status, result.output
    assert line.startswith("error ") and case.says in line, line
    assert line.endswith("]") and "not-a-secret" not in result.output
    assert case.status in COMMANDS[case.args[0]]  # the README's table says so
    assert not (root / "o").exists() and not (root / "r").exists() and not (root / "m").exists()


def test_every_command_of_the_table_is_driven_through_its_mistakes() -> None:
    driven = {(c.args[0], c.status) for c in CASES}
    for command, ends in COMMANDS.items():
        if command in ("segment", "health"):  # exit 1 at the end of a run is tested with the run
            continue
        for status in ends:
            if status in (Exit.OK, Exit.FAILED, Exit.TIMEOUT, Exit.STALLED):
                continue  # outcomes of work, tested where the work runs
            assert (command, status) in driven, (command, status)
    assert set(ANY_COMMAND) == {Exit.INTERNAL, Exit.INTERRUPTED}


def test_wait_for_a_broker_that_is_down_is_bounded_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFECTSCAN_BROKER_URL", NO_BROKER)
    result = CliRunner().invoke(cli, ["wait", "b1", "--timeout", "1", "--interval", "0.2"])
    assert result.exit_code == Exit.TIMEOUT, result.output
    assert "waiting for it" in result.stderr and "still unavailable" in result.stderr


def test_an_unexpected_error_is_one_line_naming_its_logged_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("the synthesiser broke")

    monkeypatch.setattr(synth_files, "write_synthetic_set", broken)
    monkeypatch.setenv("DEFECTSCAN_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(cli, ["synth", str(tmp_path / "s"), "--sheets", "1"])
    line = _one_line(result)
    assert result.exit_code == Exit.INTERNAL
    assert "unexpected RuntimeError: the synthesiser broke" in line and "[internal_error]" in line
    (log,) = (tmp_path / "cache" / "logs").iterdir()
    assert str(log) in line
    text = log.read_text()
    assert "Traceback" in text and "the synthesiser broke" in text and "synth" in text.splitlines()[0]


def test_the_console_script_refuses_a_missing_input_before_writing_anything(root: Path) -> None:
    out = root / "never"
    proc = subprocess.run(
        [str(BIN), "inspect", str(root / "nope"), "--model", str(root / "model"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == Exit.USAGE and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_the_console_script_says_at_once_that_a_batch_is_unknown(redis_url: str) -> None:
    proc = subprocess.run(
        [str(BIN), "wait", "20261207T000000Z-dead"],
        capture_output=True,
        text=True,
        timeout=60,  # not the 6-hour default
        env={**os.environ, "DEFECTSCAN_BROKER_URL": redis_url},
    )
    assert proc.returncode == Exit.NOT_FOUND, proc.stderr
    assert proc.stderr.count("\n") == 1 and "check the id" in proc.stderr
