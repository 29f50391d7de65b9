"""All supervisord INI quoting lives here, and nothing else builds INI text.

supervisord reads its config with ``RawConfigParser(inline_comment_prefixes=(';', '#'))``
and then %-expands values, so: a literal ``%`` must be ``%%``; a ``;`` or ``#`` after
whitespace starts a comment even inside quotes (there is no escape); CR, LF and NUL
break lines and can inject sections; ``environment=`` uses legacy shlex with no escaped
quotes. Values that cannot be carried are refused with a reason instead of mangled.
"""

import re
import shlex
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple, Union

Value = Union[str, int, bool]

# A comment starts at ';' or '#' preceded by whitespace (configparser's inline rule).
_INLINE_COMMENT = re.compile(r"\s[;#]")
_OPTION_NAME = re.compile(r"^[a-z][a-z0-9_.]*\Z")
_SECTION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]*\Z")
# Line breaks are checked first for a clearer message; the rest are refused as well, since
# some (\x0b, \x0c, \x85, U+2028) split lines for str.splitlines and editors alike.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


class UnsafeValue(ValueError):
    """A value supervisord's INI parser cannot carry; the message says why."""


def _line_problem(text: str) -> Optional[str]:
    if "\n" in text or "\r" in text:
        return "contains a line break, which would start a new line (or section) in supervisord.conf"
    if _CONTROL.search(text):
        return "contains a control character (NUL, escape, form feed, ...)"
    if _INLINE_COMMENT.search(text):
        return "contains ';' or '#' after whitespace, which supervisord reads as the start of a comment"
    return None


def problem_with(text: str) -> Optional[str]:
    """Why ``text`` cannot be written as a supervisord value, or None if it can."""
    problem = _line_problem(text)
    if problem is None and text != text.strip():
        problem = "has leading or trailing whitespace, which supervisord strips"
    return problem


def check(text: str) -> str:
    """Return ``text`` if it is safe to write, else raise UnsafeValue."""
    problem = problem_with(text)
    if problem:
        raise UnsafeValue(problem)
    return text


def escape(text: str) -> str:
    """A literal string as a supervisord value: checked, with ``%`` doubled."""
    return check(text).replace("%", "%%")


def logfile(text: str) -> str:
    """A literal path for ``stdout_logfile``/``stderr_logfile``: supervisord expands those twice.

    supervisor 4.x reads them with ``saneget`` (one %-expansion) and then expands the result
    again per process, so a literal ``%`` must be written ``%%%%`` there.
    """
    return check(text).replace("%", "%%%%")


def env_value_problem(value: str) -> Optional[str]:
    """Why ``value`` cannot go in ``environment=``, or None."""
    if '"' in value:
        return "contains a double quote, which supervisord's environment= parser cannot escape"
    if "\\" in value:
        return "contains a backslash, which supervisord's environment= parser mangles"
    if value[:1] == "'" or value[-1:] == "'":
        # dict_of_key_value_pairs strips every leading and trailing quote character.
        return "starts or ends with a single quote, which supervisord's environment= parser strips"
    return _line_problem(value)


def environment(env: Mapping[str, str]) -> str:
    """``KEY="v",KEY2="v"``: always double-quoted, since unquoted values are truncated."""
    parts = []
    for key in sorted(env):
        if not _ENV_NAME.match(key):
            raise UnsafeValue(f"environment variable name {key!r} is not [A-Za-z_][A-Za-z0-9_]*")
        value = env[key]
        problem = env_value_problem(value)
        if problem:
            raise UnsafeValue(problem)
        parts.append(f'{key}="{value}"'.replace("%", "%%"))
    return ",".join(parts)


def command(argv: Sequence[str]) -> str:
    """A command line supervisord will shlex-split back into exactly ``argv``."""
    for arg in argv:
        check_arg(arg)
    return " ".join(shlex.quote(arg) for arg in argv).replace("%", "%%")


def check_arg(arg: str) -> str:
    """An argv element: shlex.quote protects spaces, but not line breaks or comment starts."""
    problem = _line_problem(arg)
    if problem:
        raise UnsafeValue(problem)
    return arg


def raw_command(text: str) -> str:
    """A user-written shell-like command line: checked, % escaped, parsed once to prove it splits."""
    check(text)
    try:
        shlex.split(text)
    except ValueError as exc:
        raise UnsafeValue(f"cannot be split into arguments ({exc})") from None
    return text.replace("%", "%%")


Section = Tuple[str, List[Tuple[str, str]]]


def render(sections: Iterable[Section], header: Sequence[str] = ()) -> str:
    """Join sections into conf text. Option values must already be escaped by this module."""
    out: List[str] = [f"; {check(line)}" if line else ";" for line in header]
    seen = set()
    for name, options in sections:
        if not _SECTION_NAME.match(name):
            raise UnsafeValue(f"section name {name!r} is not safe")
        # supervisord's parser merges two sections of one name silently: refuse instead.
        if name in seen:
            raise UnsafeValue(f"section [{name}] would appear twice")
        seen.add(name)
        if out:
            out.append("")
        out.append(f"[{name}]")
        for key, value in options:
            if not _OPTION_NAME.match(key):
                raise UnsafeValue(f"option name {key!r} is not safe")
            if "\n" in value or "\r" in value or "\x00" in value:
                raise UnsafeValue(f"option {key} in [{name}] contains a line break")
            out.append(f"{key}={value}")
    return "\n".join(out) + "\n"


def boolean(value: bool) -> str:
    return "true" if value else "false"
