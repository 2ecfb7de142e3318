"""Invariant 7: no pickle, and no name in Redis ever chooses code to import or run.

tests/test_poison.py covers bad entries (non-JSON, bad UTF-8, pickle content
type, unknown tasks) reaching the DLQ with a reason. This module adds the
other direction: data that *names* code — an error type like ``os.system``,
a task named ``ftplib.FTP`` — is treated as text. A client that rebuilt
exceptions by importing the stored type name (as pickle-based queues do)
would import, and could run, whatever a writer to Redis chose.
"""

from __future__ import annotations

import os
import pickle
import sys

import pytest

from streamq import App, JobFailed, JobStatus, Settings
from tests.conftest import queue_name, running_worker, wait_until

pytestmark = pytest.mark.anyio

# Modules nothing in the test process imports (checked in the tests, not assumed).
UNIMPORTED = ("smtplib", "imaplib", "ftplib")


async def write_job(app: App, job_id: str, **fields: str | bytes) -> None:
    redis = await app.redis()
    key = app.keys.job(job_id)
    await redis.hset(key, mapping={"task": "t", "attempts": "1", **fields})
    await redis.expire(key, 60)


async def test_result_of_a_job_whose_error_names_a_module_imports_nothing(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant 7: ``result()`` reports a stored error type as text, importing nothing.

    Job hashes claim their error types are ``os.system``, ``smtplib.SMTP`` and
    ``imaplib:IMAP4``. ``result()`` raises JobFailed carrying each name as a
    string; ``sys.modules`` is the same set afterwards (the modules named are
    still not imported) and ``os.system`` was never called. Rebuilding the
    exception from its name would import smtplib/imaplib here.
    """
    for module in UNIMPORTED:
        assert module not in sys.modules, f"{module} already imported: pick another"
    called: list[object] = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a))
    await write_job(app, "warmup", status="failed", error_type="ValueError", error="x")
    with pytest.raises(JobFailed):
        await app.job("warmup").result(timeout=1)  # first-use imports happen here, not below

    before = set(sys.modules)
    for job_id, error_type in [
        ("a", "os.system"), ("b", "smtplib.SMTP"), ("c", "imaplib:IMAP4"),
    ]:  # fmt: skip
        await write_job(app, job_id, status="failed", error_type=error_type, error="rm -rf /")
        with pytest.raises(JobFailed) as failed:
            await app.job(job_id).result(timeout=1)
        assert type(failed.value) is JobFailed
        assert failed.value.error_type == error_type
        assert failed.value.message == "rm -rf /"
    assert set(sys.modules) == before
    assert called == []


async def test_a_pickled_result_is_not_unpickled(app: App) -> None:
    """Invariant 7: a result stored as pickle bytes is refused, not loaded.

    The JSON serializer cannot decode a pickle, so ``result()`` raises a
    ValueError; a pickle-by-default client would return the object (and, for
    a crafted pickle, run code while loading it).
    """
    payload = pickle.dumps({"owned": True})
    await write_job(app, "p", status="succeeded", result=payload)
    with pytest.raises(ValueError):
        await app.job("p").result(timeout=1)


async def test_a_task_named_like_an_importable_callable_is_never_imported(
    redis_url: str,
) -> None:
    """Invariant 7: a task name is looked up in the App's registry, never imported.

    A job for task ``ftplib.FTP`` (which no module registers) is handed back
    for a worker that knows it and, after MAX_BOUNCES hand-backs,
    dead-lettered as UnknownTask; ftplib is never imported. Resolving a task by
    importing its dotted name would import (and call) ftplib.FTP.
    """
    assert "ftplib" not in sys.modules
    name = queue_name()
    producer = App(name, redis_url=redis_url)

    @producer.task(name="ftplib.FTP")
    async def lookalike() -> None: ...

    settings = Settings(visibility_timeout_s=0.2, janitor_interval_s=0.05, max_deliveries=1)
    worker_app = App(name, redis_url=redis_url, settings=settings)
    async with producer, worker_app:
        job = await lookalike.enqueue()
        before = set(sys.modules)
        async with running_worker(worker_app):

            async def dead() -> bool:
                return await job.status() == JobStatus.DEAD

            await wait_until(dead, 30, "the lookalike job to be dead-lettered")
        assert (await job.info())["error_type"] == "UnknownTask"
        assert "ftplib" not in sys.modules
        assert not {m for m in set(sys.modules) - before if "ftp" in m}
