"""An App that loads until a file exists, then fails at import (exit 1).

For ``tests/test_supervisor.py``: the first children start fine; once the
test creates ``$STREAMQ_TEST_BREAK_FILE``, a restarted child dies before its
worker runs, as after a bad deploy. Tasks of ``tests.apps.slow``; queue from
``$STREAMQ_TEST_QUEUE``.
"""

from __future__ import annotations

import os
from pathlib import Path

from streamq import App
from tests.apps.slow import register

if Path(os.environ["STREAMQ_TEST_BREAK_FILE"]).exists():
    raise RuntimeError("tests.apps.breaks_later is broken now, on purpose")

app = register(App(os.environ.get("STREAMQ_TEST_QUEUE", "breaks-later")))
