"""Shared fixtures. Every test runs offline: sockets may reach loopback addresses only."""

from __future__ import annotations

import ipaddress
import os
import socket

import numpy as np
import pytest

from pipeline.synth import Sheet, generate_sheet, reference_template

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse any connection that would leave this machine; tests must need no network."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else None
        if host is not None:
            try:
                loopback = ipaddress.ip_address(socket.gethostbyname(str(host))).is_loopback
            except (OSError, ValueError):
                loopback = False
            if not loopback:
                raise ConnectionRefusedError(f"tests may not reach the network ({address!r})")
        real_connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session")
def template() -> np.ndarray:
    return reference_template()


@pytest.fixture(scope="session")
def sheets() -> list[Sheet]:
    """A few jittered sheets with a quarter of the instances defective."""
    return [generate_sheet(seed=101, index=i, defect_rate=0.25) for i in range(4)]
