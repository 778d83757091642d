"""Exception groups (trio's nurseries wrap what they raise) read as the plain errors inside."""

from __future__ import annotations

from typing import Any


def leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    """The exceptions in a (nested) exception group, in order."""
    found: list[BaseException] = []
    for error in group.exceptions:
        found.extend(leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return found
