"""Settings: environment variables, overrides and validation at the boundary."""

from __future__ import annotations

import pytest

from streamq import ConfigError, Settings


def test_from_env_reads_streamq_variables() -> None:
    settings = Settings.from_env(
        {
            "STREAMQ_REDIS_URL": "redis://127.0.0.1:6399/0",
            "STREAMQ_PREFIX": "jobs",
            "STREAMQ_PRIORITIES": "urgent, normal ,bulk",
            "STREAMQ_RESULT_TTL": "60",
        }
    )
    assert settings.redis_url == "redis://127.0.0.1:6399/0"
    assert settings.prefix == "jobs"
    assert settings.priorities == ("urgent", "normal", "bulk")
    assert settings.result_ttl_s == 60


def test_explicit_values_win_over_the_environment() -> None:
    settings = Settings.from_env({"STREAMQ_REDIS_URL": "redis://a"}, redis_url="redis://b")
    assert settings.redis_url == "redis://b"


def test_no_url_means_embedded() -> None:
    assert Settings.from_env({}).redis_url is None


@pytest.mark.parametrize(
    "env",
    [{"STREAMQ_RESULT_TTL": "soon"}, {"STREAMQ_RESULT_TTL": "-1"}, {"STREAMQ_PREFIX": "a b"}],
)
def test_bad_environment_is_a_config_error(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env(env)
