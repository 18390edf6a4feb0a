"""The one family of user errors, shared by ``atst_prep``, ``atst_model`` and the CLI.

A :class:`UserError` says that the cause is the user's input or environment
(a missing or unreadable file, the wrong kind of file, a value out of range,
shards that do not fit): the CLI prints ``str(error)`` as one line naming the
file or option and the reason, and exits 1. Everything else is a bug and
keeps its traceback. Subclasses say where the error arose; all are
``ValueError`` for callers that already catch that.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """Bad input or environment, not a bug; ``str()`` names the culprit and the reason in one line."""
