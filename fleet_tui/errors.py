"""Finding the error worth showing: task groups wrap the one that happened in exception groups."""

from __future__ import annotations


def leaf_error(error: BaseException) -> BaseException:
    """The first error inside any nesting of exception groups (the error itself when it is not a group)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error
