"""Redis 7 tests never pass silently: pytest runs on a small test file, in process.

Without the redis-server binary they are skipped and the summary says so
loudly (or, under STREAMQ_REQUIRE_REDIS7=1, they fail); asking for a session
on a server that is not there is a usage error, not a quiet Valkey run.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

CONFTEST = """
pytest_plugins = ["tests.compat.plugin"]
"""
NEEDS_REDIS7 = """
from tests.compat.plugin import require_redis7

def test_needs_redis7():
    require_redis7()
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for name in ("STREAMQ_TEST_SERVER", "STREAMQ_TEST_SERVER_BIN", "STREAMQ_REQUIRE_REDIS7"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STREAMQ_REDIS7_SERVER", str(pytester.path / "no-redis-server"))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_needs=NEEDS_REDIS7)
    return pytester


def test_without_redis_server_the_tests_are_not_run_loudly(project: pytest.Pytester) -> None:
    result = project.runpytest_inprocess("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*REDIS 7 TESTS NOT RUN: 1*",
            "*streamq was not tested against Redis 7.0 (install it: apt-get install redis-server*",
            "*1 test(s) did not run: no */no-redis-server.*",
        ]
    )


def test_ci_fails_without_redis_server(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMQ_REQUIRE_REDIS7", "1")
    result = project.runpytest_inprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*REDIS 7 TESTS NOT RUN*STREAMQ_REQUIRE_REDIS7 is set*"])


def test_a_session_on_a_missing_server_is_a_usage_error(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMQ_TEST_SERVER", "redis7")
    result = project.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*STREAMQ_TEST_SERVER=redis7 but no */no-redis-server*"])
