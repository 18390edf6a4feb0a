"""The one family of user errors, shared by ``atst_prep``, ``atst_model`` and the CLI.

A :class:`UserError` says that the cause is the user's input or environment
(a missing or unreadable file, the wrong kind of file, a value out of range,
shards that do not fit): the CLI prints ``str(error)`` as one line naming the
file or option and the reason, and exits 1. Everything else is a bug and
keeps its traceback. Subclasses say where the error arose; all are
``ValueError`` for callers that already catch that.
"""

from __future__ import annotations

from typing import Callable, TypeVar

__all__ = ["ConfigError", "UserError", "checked"]

T = TypeVar("T")


class UserError(ValueError):
    """Bad input or environment, not a bug; ``str()`` names the culprit and the reason in one line."""


class ConfigError(UserError):
    """Invalid parameters (a value out of range, options that do not go together)."""


def checked(factory: Callable[..., T], *args, **kwargs) -> T:
    """``factory(*args, **kwargs)`` (a config dataclass that validates itself), its ValueError as a ConfigError."""
    try:
        return factory(*args, **kwargs)
    except UserError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
