"""Sentinel deployments (``tests/sentinel/server.py``): one shared by the tests that
leave it as they found it, and a fresh one for a test that breaks its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sentinel.server import SentinelDeployment, sentinel_deployment


@pytest.fixture(scope="session")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelDeployment]:
    """A master, a replica and three sentinels for the session; do not break it."""
    with sentinel_deployment(tmp_path_factory.mktemp("sentinel")) as deployment:
        yield deployment


@pytest.fixture
def own_sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelDeployment]:
    """A deployment of this test's own (about 0.3 s to start), to kill parts of."""
    with sentinel_deployment(tmp_path_factory.mktemp("sentinel-own")) as deployment:
        yield deployment
