"""Every test under tests/cluster is marked ``cluster`` (``make test`` runs them).

The cluster itself is the session fixture ``cluster_url`` of tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from streamq import App
from tests.conftest import assert_no_key_leak, queue_name


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith("tests/cluster/"):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture
async def cluster_app(cluster_url: str) -> AsyncIterator[App]:
    application = App(queue_name(), redis_url=cluster_url)
    async with application:
        yield application
        await assert_no_key_leak(application)
