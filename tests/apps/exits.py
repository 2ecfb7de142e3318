"""An App whose ``exits.process`` task ends the worker process (``os._exit``).

For ``tests/test_handler_properties.py``: ``streamq worker tests.apps.exits:app``
runs it with the tasks of ``tests.apps.slow`` beside it.
"""

from __future__ import annotations

import os

from streamq import App
from tests.apps.slow import register

app = register(App(os.environ.get("STREAMQ_TEST_QUEUE", "exits")))


@app.task(name="exits.process")
def exits() -> None:
    os._exit(17)  # no cleanup, no outcome: as if the machine lost the process
