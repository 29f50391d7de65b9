"""The one error type a user sees: it names the file, the key path and the fix."""

import difflib
from typing import Iterable, Optional


class UserError(Exception):
    """An error caused by input or environment, shown without a traceback (exit status 2)."""

    exit_code = 2


class DeployError(UserError):
    """The deployment did not come up (a worker or the migration failed, a timeout): exit status 1,
    so scripts can tell it from a bad spec or command line (2)."""

    exit_code = 1


class SpecError(UserError):
    """A problem in the deployment spec, located by file and dotted key path."""

    def __init__(self, source: str, key: str, problem: str, hint: Optional[str] = None) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = f"{self.source}: {self.key}: " if self.key else f"{self.source}: "
        text = where + self.problem
        if self.hint:
            text += f"; {self.hint}"
        return text


def did_you_mean(word: str, choices: Iterable[str]) -> Optional[str]:
    """A 'did you mean' hint for a misspelt key or value, or None when nothing is close."""
    matches = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"did you mean '{matches[0]}'?" if matches else None
