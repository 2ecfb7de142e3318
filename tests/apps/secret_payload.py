"""An App whose serializer has a bug: decoding a payload raises ``LookupError``.

``streamq worker tests.apps.secret_payload:app`` in a child process, queue
from ``$STREAMQ_TEST_QUEUE``. The exception is not one the worker expects
from a serializer (``ValueError``), so it escapes as a bug and the worker logs
it with its traceback. The frames it passes through hold the job's payload
(``data``) and a local secret (``token``): neither may appear in the log.
"""

from __future__ import annotations

import os
from typing import Any

from streamq import App
from streamq.serializers import JSONSerializer

TASK = "secret.send"
ARGUMENT_SECRET = "arg-hunter2-8d1f"
"""What a test passes as the job's argument (in the payload)."""
LOCAL_SECRET = "local-hunter2-5c3e"
"""Held in a local variable of the frame that raises."""


class BrokenLoads(JSONSerializer):
    """Encodes as JSON; decoding fails the way a bug in a user's serializer would."""

    def loads(self, data: bytes) -> Any:
        token = LOCAL_SECRET
        raise LookupError(f"no decoder registered ({len(token)}-byte key)")


def register(app: App) -> App:
    @app.task(name=TASK, max_retries=0)
    async def send(password: str) -> None:
        return None

    return app


app = register(App(os.environ.get("STREAMQ_TEST_QUEUE", "secret"), serializer=BrokenLoads()))
