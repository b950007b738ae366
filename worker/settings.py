"""Every setting defectscan reads from the environment, in one place (pydantic-settings).

Each field ``name`` is read from ``DEFECTSCAN_<NAME>``; :func:`settings` reads the environment when
called, so a process (or a test) that changes it is seen at once. The README's configuration table is
this class's fields (a test keeps them the same). The AWS variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ...) are boto3's own and read by it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEFECTSCAN_", extra="ignore", frozen=True)

    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker (redis:// or amqp://).")
    redis_url: str | None = Field(
        None, description="Redis of the batch bookkeeping; default: the broker when it is Redis."
    )
    result_backend: str | None = Field(None, description="Celery result backend; default: from the broker.")
    registry: str | None = Field(None, description="Model registry root, e.g. s3://bucket/models.")
    cache: Path = Field(
        Path.home() / ".cache" / "defectscan", description="Where workers keep downloaded models."
    )
    s3_addressing: str | None = Field(None, description="`path` for stores that need path-style addressing.")
    s3_max_attempts: int = Field(
        8, ge=1, description="Attempts per S3 call, with backoff, before the store counts as unavailable."
    )
    soft_time_limit: int = Field(
        1500, gt=0, description="Most seconds a chunk may run (soft; per-chunk cap)."
    )
    time_limit: int = Field(1800, gt=0, description="Most seconds a chunk may run (hard; per-chunk cap).")
    chunk_base_s: float = Field(
        120.0, ge=0, description="A chunk's soft limit: this plus `image_s` per image."
    )
    image_s: float = Field(60.0, ge=0, description="Seconds per image in a chunk's soft limit.")
    redis_wait_s: float = Field(600.0, ge=0, description="How long a command waits through a broker outage.")
    heartbeat_s: float = Field(10.0, gt=0, description="How often a running chunk renews its lease.")
    dead_after_s: float = Field(
        60.0, gt=0, description="A chunk whose lease is this old has lost its worker."
    )
    sweep_s: float = Field(15.0, gt=0, description="How often a worker looks for chunks of dead workers.")
    torch_threads: int = Field(
        0, ge=0, description="Compute threads per worker process (0: one per core it is given)."
    )
    runtime: Literal["auto", "torch", "openvino"] = Field(
        "auto",
        description="Where the networks run: auto (OpenVINO on a CPU, torch on CUDA), torch or openvino.",
    )
    crops_per_forward: int = Field(
        0, ge=0, description="Crops per forward pass, shared by images (0: from a pixel budget per device)."
    )
    metrics_port: int | None = Field(None, description="Serve Prometheus metrics on this port.")
    nightly: str | None = Field(None, description="Set by `defectscan beat` for its scheduler (JSON).")
    aws_endpoint_url: str | None = Field(
        None,
        validation_alias="AWS_ENDPOINT_URL",
        description="boto3's S3 endpoint (boto3 reads it and the other AWS variables); `health` checks it.",
    )
    prometheus_multiproc_dir: str | None = Field(
        None,
        validation_alias="PROMETHEUS_MULTIPROC_DIR",
        description="prometheus-client's: with several worker processes, their shared metrics folder.",
    )

    @model_validator(mode="after")
    def _limits_ordered(self) -> Settings:
        if self.soft_time_limit >= self.time_limit:
            raise ValueError(
                f"DEFECTSCAN_SOFT_TIME_LIMIT ({self.soft_time_limit}) must be below "
                f"DEFECTSCAN_TIME_LIMIT ({self.time_limit})"
            )
        return self


def settings() -> Settings:
    """The settings as the environment says now."""
    return Settings()


# The AWS variables boto3 makes an S3 client from: a process keeps one client per their values.
CLIENT_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CA_BUNDLE",
)


def aws_client_env() -> tuple[str | None, ...]:
    """The values of :data:`CLIENT_ENV` now (boto3 reads them itself; this only tells them apart)."""
    return tuple(os.environ.get(name) for name in CLIENT_ENV)


def env_name(field: str) -> str:
    """The environment variable of a :class:`Settings` field."""
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else f"DEFECTSCAN_{field.upper()}"


def runtime_cache() -> Path:
    """Where compiled networks are kept, beside the downloaded models: ``$DEFECTSCAN_CACHE/openvino``."""
    return settings().cache / "openvino"
