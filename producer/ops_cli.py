"""Operational sub-commands for containers: ``health`` and ``bucket ensure``."""

from __future__ import annotations

import sys

import click

from defectscan.producer.console import err
from defectscan.worker.batches import connect
from defectscan.worker.settings import settings
from defectscan.worker.storage import S3Settings


@click.command()
def health() -> None:
    """Exit 0 when the broker answers and, where AWS_ENDPOINT_URL is set, the S3 store too (1 if not).

    The image's health check; it prints the first failure, never a credential."""
    try:
        connect(wait_s=0).ping()  # a health check answers now: no waiting through an outage
    except Exception as exc:
        err.print(f"unhealthy: broker: {type(exc).__name__}", highlight=False)
        sys.exit(1)
    if settings().aws_endpoint_url:
        try:
            S3Settings.from_env().client().list_buckets()
        except Exception as exc:
            err.print(f"unhealthy: S3 store: {type(exc).__name__}", highlight=False)
            sys.exit(1)
    click.echo("healthy")


@click.group()
def bucket() -> None:
    """S3 buckets."""


@bucket.command()
@click.argument("name")
def ensure(name: str) -> None:
    """Create bucket NAME unless it exists (idempotent; the compose file's s3-init step)."""
    from botocore.exceptions import ClientError

    client = S3Settings.from_env().client()
    try:
        client.head_bucket(Bucket=name)
        click.echo(f"bucket {name} exists")
    except ClientError:
        client.create_bucket(Bucket=name)
        click.echo(f"bucket {name} created")


OPS_COMMANDS = (health, bucket)
