"""Testing jobs with streamq's pytest plugin: a test module as a user would write it.

The plugin comes with streamq (nothing to add to a conftest). Its fixtures
give each test a fresh queue on a private valkey-server that the session
starts on first use, and bind *your* App to it: the App from
``examples/emails.py``, named by a marker, with the tasks registered on it at
import. ``run_until_idle`` then runs every job to completion, retries
included, so a test asserts on results without sleeping.

Run it with ``pytest examples/test_with_streamq.py`` (the project's suite runs
it too: tests/test_testing_plugin.py).
"""

from __future__ import annotations

import emails  # examples/emails.py: the App under test and its tasks
import flaky_retries  # examples/flaky_retries.py: handlers that fail, then retry
import pytest

from streamq import App, JobFailed, JobStatus
from streamq.testing import RunningWorker, run_until_idle

# Every test here is async (anyio) and tests the emails App unless it says otherwise.
pytestmark = [pytest.mark.anyio, pytest.mark.streamq_app(emails.app)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's client is asyncio only


async def test_a_welcome_email_is_sent(streamq_app: App) -> None:
    # The task enqueues through emails.app, which the fixture bound to the test queue.
    job = await emails.send_email.enqueue("ada@example.com", "Welcome!")
    await run_until_idle(streamq_app)
    result = await job.result()
    assert result["status"] == "sent"
    assert result["message_id"] == f"<{job.id}@example.com>"


async def test_a_running_worker_serves_the_whole_test(streamq_worker: RunningWorker) -> None:
    welcomes = await emails.send_email.enqueue_many(
        [{"to": f"user{n}@example.com", "subject": "Welcome!"} for n in range(5)]
    )
    digest = await emails.send_digest.enqueue("ops@example.com", ["signups: 5"])
    await streamq_worker.run_until_idle()
    assert [(await job.result())["to"] for job in welcomes] == [
        f"user{n}@example.com" for n in range(5)
    ]
    assert await digest.result() == {"to": "ops@example.com", "items": 1, "status": "sent"}


async def test_a_digest_due_soon_runs_one_due_tomorrow_waits(streamq_app: App) -> None:
    # Scheduled jobs due within a minute run now; later ones stay scheduled.
    soon = await emails.send_digest.enqueue_in(30, "ops@example.com", ["soon"])
    tomorrow = await emails.send_digest.enqueue_in(86_400, "ops@example.com", ["tomorrow"])
    await run_until_idle(streamq_app)
    assert (await soon.result())["status"] == "sent"
    assert await tomorrow.status() == JobStatus.SCHEDULED


@pytest.mark.streamq_app(flaky_retries.app)  # the closest marker wins
async def test_retries_run_without_waiting_out_their_backoff(streamq_app: App) -> None:
    rates = await flaky_retries.fetch_rates.enqueue("USD")  # fails twice, then succeeds
    crm = await flaky_retries.sync_crm.enqueue("acme")  # fails every time
    await run_until_idle(streamq_app)
    assert (await rates.result())["attempt"] == 3
    with pytest.raises(JobFailed) as failed:
        await crm.result()
    assert failed.value.error_type == "ConnectionRefusedError"
