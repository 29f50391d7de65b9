"""All YAML quoting lives here: a small block-style emitter for the JSON-like values the
Kubernetes target builds (dicts, lists, str, int, bool, None).

Not PyYAML, so the runtime dependencies stay four: the manifests need no anchors, tags,
multi-line scalars or floats, and a string is written plain only when it matches a narrow
pattern that no YAML 1.1 or 1.2 reader turns into anything but that string; every other
string is double-quoted with each non-printable or line-breaking character escaped.
tests/unit/test_yaml.py round-trips hostile values through PyYAML's safe loader.
"""

import re
from typing import Any, Iterable, List, Mapping, Sequence

# Starts with a letter or '/' (or an option's one or two dashes and then a letter), then
# letters, digits and . _ / - only: never a number, a date, a sequence entry, a document
# marker, a flow indicator, a comment, an anchor or a key separator.
_PLAIN = re.compile(r"^(-{1,2}[A-Za-z]|[A-Za-z/])[A-Za-z0-9._/-]*\Z")
# YAML 1.1 reads these (any case) as booleans or null; 1.2 core reads some of them.
_RESERVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf"}
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\x00": "\\0"}


def _printable(c: str) -> bool:
    # YAML's printable set, minus the characters that break or fold a line (NEL, LS, PS)
    # and the byte order mark.
    o = ord(c)
    return (0x20 <= o <= 0x7E or 0xA0 <= o <= 0xD7FF or 0xE000 <= o <= 0xFFFD or 0x10000 <= o <= 0x10FFFF) \
        and o not in (0x2028, 0x2029, 0xFEFF)


def _escape(c: str) -> str:
    if c in _ESCAPES:
        return _ESCAPES[c]
    if _printable(c):
        return c
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def string(text: str) -> str:
    """A string as a YAML scalar that every reader reads back as exactly ``text``."""
    if _PLAIN.match(text) and text.lower() not in _RESERVED:
        return text
    return '"' + "".join(_escape(c) for c in text) + '"'


def scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return string(value)
    # Floats are left out on purpose: Kubernetes fields are integers or strings.
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as YAML")


def _block(value: Any, indent: int) -> List[str]:
    """Lines for a non-empty dict or list at ``indent`` spaces."""
    pad = " " * indent
    out: List[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"mapping key {key!r} is not a string")
            if _nested(item):
                out.append(f"{pad}{string(key)}:")
                # kubectl's style: a list under a key is not indented further.
                out += _block(item, indent if isinstance(item, list) else indent + 2)
            else:
                out.append(f"{pad}{string(key)}: {_inline(item)}")
        return out
    for item in value:
        if _nested(item):
            # The item's block at indent+2 with its first two spaces replaced by "- ".
            lines = _block(item, indent + 2)
            out.append(f"{pad}- {lines[0][indent + 2:]}")
            out += lines[1:]
        else:
            out.append(f"{pad}- {_inline(item)}")
    return out


def _nested(value: Any) -> bool:
    return isinstance(value, (Mapping, list, tuple)) and len(value) > 0


def _inline(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, (list, tuple)):
        return "[]"
    return scalar(value)


def comment(lines: Iterable[str]) -> List[str]:
    """Comment lines; a line break inside one would end the comment, so it is refused."""
    out = []
    for line in lines:
        if any(not _printable(c) for c in line):
            raise ValueError(f"comment line {line!r} has a non-printable character")
        out.append(f"# {line}".rstrip())
    return out


def dump_all(documents: Sequence[Mapping[str, Any]], header: Sequence[str] = ()) -> str:
    """Documents as a multi-document YAML stream, each starting with ``---``."""
    out = comment(header)
    for doc in documents:
        out.append("---")
        out += _block(doc, 0) if doc else ["{}"]
    return "\n".join(out) + "\n"
