"""How large a spec may be: one table of limits, checked before anything else reads a value.

Every value of the spec reaches supervisord (its conf) or a child (an argv, an environment),
and supervisord's parser is slow on large input: it splits each process's ``environment=``
with shlex once per process (``numprocs`` times), and shlex builds a token one character at
a time, quadratic in its length (a 400 kB value took 9.5 s, 5 MB ran past 5 minutes). The
TOML parser itself needs about 1 s of CPU for 250 kB of small array items (here). So the
file (before the TOML parser sees it), each value, each array and table,
the nesting, the number of processes and the environment text supervisord splits in all are
bounded, and `check` and `render` answer any spec within about a second.

Pure: data in, ``(key, problem)`` out; the loader turns that into one SpecError line.
"""

from typing import Any, List, Optional, Tuple

from .model import format_size

# The spec file (a deployment spec is a few kB; pyproject.toml a few more).
SPEC_CHARS = 128 * 1024
# Read at most this much of a larger file, to name its longest line's key.
SCAN_BYTES = 16 * 1024 * 1024
# Any string: env values, commands, URLs, paths (PATH_MAX is 4096), header values.
STRING_CHARS = 4096
# Any array ([[programs]], [[alerts]], alerts[].to, uvicorn lists) and any table (app.env, headers).
ARRAY_ITEMS = 64
TABLE_KEYS = 64
# The deepest a spec goes is crash_loop.programs.<name>.<key>.
DEPTH = 6
# Processes supervisord runs for the app (workers, programs' numprocs, migration, listener,
# watchdog): supervisord's parser spends about 1 ms on each.
PROCESSES = 1024
# The environment= text supervisord splits, summed over every process (~1 µs a character).
ENVIRONMENT_TOTAL = 256 * 1024
# The listener's settings (every [[alerts]] entry, base64 JSON): one shlex token.
LISTENER_SETTINGS = 32 * 1024
# One rendered command line (the worker's carries every [server.uvicorn] setting): supervisord
# splits it with shlex at every spawn.
COMMAND_CHARS = 16 * 1024

Problem = Tuple[str, str]


def _key(path: str, name: str) -> str:
    shown = repr(name) if not name.isprintable() or len(name) > 64 else name
    return f"{path}.{shown}" if path else shown


def shape_problem(data: Any, path: str = "", depth: int = 0) -> Optional[Problem]:
    """The first value over a limit (string length, array items, table keys, nesting), as
    (key path, problem); None when every value is within them. Linear in the data."""
    if depth > DEPTH:
        return path, f"is nested {depth} levels deep; a spec goes at most {DEPTH} levels deep"
    if isinstance(data, str):
        if len(data) > STRING_CHARS:
            return path, f"is {len(data)} characters long; a value may be at most {STRING_CHARS}"
        return None
    if isinstance(data, dict):
        if len(data) > TABLE_KEYS:
            return path, f"has {len(data)} keys; a table may have at most {TABLE_KEYS}"
        for name, value in data.items():
            key = _key(path, str(name))
            if len(str(name)) > STRING_CHARS:
                return path, f"has a key {len(str(name))} characters long; at most {STRING_CHARS}"
            found = shape_problem(value, key, depth + 1)
            if found:
                return found
        return None
    if isinstance(data, list):
        if len(data) > ARRAY_ITEMS:
            return path, f"has {len(data)} items; an array may have at most {ARRAY_ITEMS}"
        for i, value in enumerate(data):
            found = shape_problem(value, f"{path}[{i}]", depth + 1)
            if found:
                return found
    return None


def oversized_text(text: str, total: Optional[int] = None) -> Optional[Problem]:
    """Whether the spec text is over SPEC_CHARS, as (the key of its longest line, problem).

    Checked before the TOML parser sees the text. The key is read off the line (``NAME =``)
    and the last table header above it, which names it for every spec written as tables."""
    size = max(len(text), total or 0)
    if size <= SPEC_CHARS:
        return None
    lines = text.split("\n")
    n = max(range(len(lines)), key=lambda i: len(lines[i]))
    longest = len(lines[n])
    limit = f"a spec file may be at most {format_size(SPEC_CHARS)}"
    if longest * 2 < len(text):
        return "", f"is {format_size(size)} ({len(lines)} lines); {limit}"
    # Only the first SCAN_BYTES were read: the last line read may go on.
    cut = n == len(lines) - 1 and size > len(text)
    return (_key_on_line(lines, n), f"line {n + 1} is {'over ' if cut else ''}{format_size(longest)} long; a value "
            f"may be at most {STRING_CHARS} characters, {limit}")


def _key_on_line(lines: List[str], n: int) -> str:
    name, _, _ = lines[n].partition("=")
    name = name.strip().strip("\"'")
    if not name or len(name) > 200 or "=" not in lines[n]:
        return ""
    for i in range(n - 1, -1, -1):
        header = lines[i].strip()
        if header.startswith("[[") and "]]" in header:
            table = header[2:header.index("]]")].strip()
            index = sum(1 for line in lines[:i] if line.strip().startswith(f"[[{table}]]"))
            return f"{table}[{index}].{name}"
        if header.startswith("[") and "]" in header:
            return f"{header[1:header.index(']')].strip()}.{name}"
    return name


def process_problem(spec: Any) -> Optional[Problem]:
    """What supervisord would parse for ``spec``, over PROCESSES, ENVIRONMENT_TOTAL,
    LISTENER_SETTINGS or COMMAND_CHARS; measured on the rendered environment= and command=."""
    from ..generate import conf, ini

    # (the env key, the count key, how many processes, their own env)
    counts = [("app.env", "server.workers", spec.server.workers, ())]
    if spec.migrate:
        counts.append(("migrate.env", "migrate", 1, spec.migrate.env))
    counts += [(f"programs[{i}].env", f"programs[{i}].numprocs", p.numprocs, p.env)
               for i, p in enumerate(spec.programs)]
    processes = sum(c[2] for c in counts) + 2  # the listener, the watchdog
    if processes > PROCESSES:
        key = max(counts, key=lambda c: c[2])[1]
        return key, (f"{processes} processes in all (server.workers, programs[].numprocs); supervisord runs at most "
                     f"{PROCESSES} for one app here")
    settings = len(conf.listener_config(spec).to_env())
    if settings > LISTENER_SETTINGS:
        return "alerts", (f"the listener's settings (every [[alerts]] entry) come to {format_size(settings)}; at most "
                          f"{format_size(LISTENER_SETTINGS)}")
    total, worst = settings, (0, "app.env", 0, 0)
    for env_key, _, count, own in counts:
        text = len(ini.environment(conf.program_environment(spec, own)))
        total += count * text
        worst = max(worst, (count * text, env_key, count, text))
    if total > ENVIRONMENT_TOTAL:
        _, key, count, text = worst
        return key, (f"supervisord would split {format_size(total)} of environment= text for this app ({count} "
                     f"processes x {format_size(text)} here); at most {format_size(ENVIRONMENT_TOTAL)}: shorten the "
                     "values or run fewer processes")
    command = len(ini.command(conf.worker_argv(spec)))
    if command > COMMAND_CHARS:
        return "server.uvicorn", (f"the worker's command line comes to {format_size(command)}; at most "
                                  f"{format_size(COMMAND_CHARS)}")
    return None
