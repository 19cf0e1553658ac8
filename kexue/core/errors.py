"""The one configuration error type and its "did you mean" suggestion, shared by every validator."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A configuration problem, with the file and the dotted key it concerns."""


def did_you_mean(name: str, choices: Iterable) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
