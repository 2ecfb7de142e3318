"""A module that raises while it is imported, as a user's App with a bug would.

``streamq worker tests.apps.broken:app`` fails before any worker starts (an
uncaught exception: exit 1 with its traceback).
"""

from __future__ import annotations

raise RuntimeError("tests.apps.broken fails at import on purpose")
