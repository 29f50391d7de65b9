"""Fuzzed and hostile specs: a clear SpecError/UserError, or a conf that supervisor's own parser
loads with exactly the sections and options the renderer built; never another exception, never an
injected section or option, never a value cut short by an inline comment."""

import dataclasses
import os
import random
import shlex
import tempfile

import pytest
import tomli_w
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from supervisor_fastapi.cli.main import main
from supervisor_fastapi.errors import SpecError, UserError
from supervisor_fastapi.generate.conf import build, rendered_path, worker_argv
from supervisor_fastapi.layout import Names
from supervisor_fastapi.spec import parse_spec
from supervisor_fastapi.uvicorn_settings import UVICORN_SETTINGS

from ..hypothesis_profiles import examples
from ._core_helpers import HOST, conf_of, load, make_dirs, program_configs, raw_sections

SRC_DIR = "/srv/fuzz"
SRC = SRC_DIR + "/supervisor-fastapi.toml"
RUN_DIR = ""  # set by _run_dir below: a mkdtemp here, at import, left /tmp/sf-fuzz-* behind after every run


@pytest.fixture(scope="module", autouse=True)
def _run_dir():
    global RUN_DIR
    with tempfile.TemporaryDirectory(prefix="sf-fuzz-") as folder:
        RUN_DIR = folder
        yield
    RUN_DIR = ""
# FUZZ_EXAMPLES overrides the count (tests/hypothesis_profiles.py: 250 locally, 50 in CI).
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", examples(250))), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

SPECIALS = ["\n[program:evil]\ncommand=/bin/evil\n", "\n", "\r", "\r\n", "\x00", " ;", " #", ";", "#", "%",
            "%%", "%(here)s", "%(ENV_HOME)s", "%(process_num)02d", '"', "'", "\\", "\u2028", "\u2029", "\x85",
            "\x0b", "\x0c", "\x1b", "\t", " ", "=", ",", ":", "[", "]", "é", "💥", "\u00a0", "${HOME}", "$(id)",
            "`id`", "*", "\n  continued", "evil=1", "[supervisord]"]
hostile = st.lists(st.one_of(st.sampled_from(SPECIALS), st.text(max_size=6)), max_size=6).map("".join)
huge = st.one_of(st.integers(), st.sampled_from([0, -1, 1, 2, 10**6, 2**63, -(2**63), 10**30]))
floats = st.floats(allow_nan=True, allow_infinity=True)
scalar = st.one_of(hostile, huge, floats, st.booleans())
anything = st.recursive(scalar, lambda ch: st.lists(ch, max_size=3) | st.dictionaries(hostile, ch, max_size=3),
                        max_leaves=6)


class Key:
    """A key's strategies: ``good`` values (legal, but tricky: %, spaces, quotes, unicode) and ``bad`` ones."""

    def __init__(self, good, bad=None):
        self.good = good if isinstance(good, st.SearchStrategy) else st.sampled_from(good)
        self.bad = bad if bad is not None else st.one_of(
            hostile, anything, st.builds(lambda g, h: g + h if isinstance(g, str) else h, self.good, hostile),
            st.builds(lambda h, g: h + g if isinstance(g, str) else h, hostile, self.good))


TRICKY_TEXT = ["plain", "50%", "%(here)s", "a b", "a;b", "a#b", "it's", "é💥", "a,b=c d", "$HOME", "", "x\ty"]
env_values = st.one_of(st.sampled_from([t for t in TRICKY_TEXT if "\\" not in t and "'" not in t]), huge,
                       st.booleans(), st.floats(allow_nan=False, allow_infinity=False))
names = Key(["web", "shop-api", "a_b", "x" * 40])
commands = Key(["alembic upgrade head", "celery -A app worker", "echo 'a b' \"c\" 100% %(here)s", "/bin/true",
                "sh -c 'exec x;y'", "run --opt=é"])
paths = Key(["/srv/app", "src", "/opt/a b/x", "../x", "/srv/50%/x", "/srv/%(here)s", "/srv/a;b#c", "/srv/é"])
envs = Key(st.dictionaries(st.sampled_from(["A", "DATABASE_URL", "_X", "lower"]), env_values, max_size=4),
           st.one_of(st.dictionaries(st.one_of(st.sampled_from(["SUPERVISOR_ENABLED", "A"]), hostile),
                                     st.one_of(hostile, anything), max_size=3), anything))
numbers = Key(st.one_of(st.integers(0, 100), st.floats(0, 100)), st.one_of(huge, floats, anything))


def _uvicorn_key(setting):
    good = {"bool": st.booleans(), "int": st.integers(0, 1000), "float": st.floats(0, 100),
            "str": st.sampled_from(setting.choices) if setting.choices else st.sampled_from(TRICKY_TEXT[:9]),
            "list": st.lists(st.sampled_from(["127.0.0.1", "10.0.0.1", "*", "X-A: b%"]), max_size=3),
            "env": st.sampled_from(["TLS_PW", "_x", "A1"])}[setting.kind]
    return Key(good)


APP = {"name": names, "asgi": Key(["main:app", "pkg.mod:create()", "m:a.b"]), "factory": Key(st.booleans()),
       "directory": paths, "python": Key(["/usr/bin/python3", "python3", "venv/bin/python", "/opt/my env/python"]),
       "env": envs, "user": Key(["root"], st.one_of(hostile, st.sampled_from(["root:root", "no such"])))}
SERVER = {"bind": Key(["tcp://127.0.0.1:8000", "tcp://0.0.0.0:80", "unix:///run/x.sock", "unix://rel.sock",
                       "tcp://localhost:65535", "unix:///tmp/50%.sock", "unix:///tmp/a b.sock"],
                      st.one_of(hostile, st.sampled_from(["tcp://*:80", "tcp://[::1]:80", "tcp://h:0", "unix://"]))),
          "workers": Key(st.one_of(st.just("auto"), st.integers(1, 6)), st.one_of(huge, anything)),
          "graceful_timeout": numbers, "backlog": Key(st.integers(1, 65535), st.one_of(huge, anything)),
          "socket_mode": Key(["0660", "666"]), "socket_owner": Key(["root", "root:root"]),
          "heartbeat_timeout": Key(st.integers(2, 100), st.one_of(floats, huge)),
          "startsecs": Key(st.integers(0, 10), st.one_of(huge, anything))}
UVICORN = {k: _uvicorn_key(s) for k, s in UVICORN_SETTINGS.items()}
MEMORY = {"per_worker": Key(["1GB", "512MiB", "1.5G", 1024], st.sampled_from(["0", "-1GB", "1e400GB", 0, "x"])),
          "budget": Key(["90%", "3GB", "100%", "0.5%"], st.sampled_from(["0%", "101%", "nan%", "inf%", "-3GB"])),
          "limit": Key(["2GB"]), "check_interval": numbers, "limit_checks": Key(st.integers(1, 100), huge)}
PROGRAM = {"name": names, "command": commands, "numprocs": Key(st.integers(1, 4), st.one_of(huge, anything)),
           "env": envs, "directory": paths, "autostart": Key(st.booleans())}


@st.composite
def table(draw, keys, rnd, extra_keys=True, bad=0.06):
    """A table with a random subset of the known keys, a few of them bad, rarely an unknown key."""
    out = {}
    for key, strategy in keys.items():
        if draw(st.booleans()):
            out[key] = draw(strategy.bad if rnd.random() < bad else strategy.good)
    if extra_keys and bad and rnd.random() < 0.03:
        out[draw(hostile)] = draw(anything)
    return out


@st.composite
def specs(draw, bad=0.06):
    """Spec tables; ``bad`` of the keys get a value the loader must refuse (with ``bad=0``, no
    refusal on purpose: a test of what accepted specs render wastes no draws on the others)."""
    # Hypothesis biases integers towards their bounds; a seeded Random keeps rare mutations rare.
    rnd = random.Random(draw(st.integers(0, 2**32)))
    d = {"app": {"name": "web", "asgi": "main:app"}}
    d["app"].update(draw(table(APP, rnd, bad=bad)))
    if draw(st.booleans()):
        d["server"] = draw(table(SERVER, rnd, bad=bad))
        if draw(st.booleans()):
            d["server"]["uvicorn"] = draw(table(UVICORN, rnd, bad=bad))
    if draw(st.booleans()):
        d["memory"] = draw(table(MEMORY, rnd, bad=bad))
    if draw(st.booleans()):
        d["programs"] = draw(st.lists(table(PROGRAM, rnd, bad=bad), max_size=3))
    if draw(st.booleans()):
        migrate = {"command": commands, "timeout": Key(st.integers(1, 1000), floats), "env": envs}
        d["migrate"] = draw(table(migrate, rnd, bad=bad))
    if rnd.random() < 0.2:
        d["supervisord"] = draw(table({"run_dir": paths, "log_level": Key(["info", "debug"])}, rnd, bad=bad))
    if bad and rnd.random() < 0.03:
        d[draw(st.sampled_from(["crash_loop", "alerts", "listener", draw(hostile)]))] = draw(anything)
    if bad and rnd.random() < 0.03:  # drop a required key
        d["app"].pop(draw(st.sampled_from(["name", "asgi"])), None)
    return d


def to_toml(d):
    try:
        return tomli_w.dumps(d)
    except Exception:  # a value TOML cannot carry is not a spec anyone can write
        assume(False)


def assert_clear_error(exc):
    text = str(exc)
    assert text.startswith(f"{SRC}: ") and len(text) > len(SRC) + 6, text
    assert "\n" not in text and "\r" not in text, f"not one line: {text!r}"
    if isinstance(exc, SpecError):
        assert exc.problem and (exc.key == "" or text.startswith(f"{SRC}: {exc.key}: "))


def parse_or_error(text):
    try:
        return parse_spec(text, SRC, SRC_DIR, HOST)
    except UserError as exc:  # SpecError is a UserError
        assert_clear_error(exc)
        return None


def assert_no_injection(spec, fragment=False):
    """What supervisor's parser reads is exactly what the renderer built, value for value."""
    text = conf_of(spec, fragment)
    seen = raw_sections(text)
    built = build(spec, spec.supervisord.hosting(fragment))
    assert list(seen) == [name for name, _ in built]
    for name, options in built:
        assert seen[name] == dict(options), name
    assert "program:evil" not in seen
    return text


def assert_loads_with_supervisor(spec):
    # Users and socket owners are host facts the spec cannot know; drop them for the load.
    spec = dataclasses.replace(spec, app=dataclasses.replace(spec.app, user=None),
                               server=dataclasses.replace(spec.server, socket_owner=None),
                               supervisord=dataclasses.replace(spec.supervisord, run_dir=RUN_DIR))
    make_dirs(spec)
    options = load(conf_of(spec))
    groups = program_configs(options)
    web = groups[spec.app.name]
    assert len(web) == spec.server.workers
    assert shlex.split(web[0][1].command) == worker_argv(spec)
    # Every app program gets PATH (app.python's folder first) unless the spec's env sets it.
    assert (web[0][1].environment or {}) == {"PATH": rendered_path(spec), **dict(spec.app.env)}
    assert web[0][1].directory == spec.app.directory
    for p in spec.programs:
        got = groups[f"{spec.app.name}_{p.name}"][0][1]
        assert got.command == p.command
        assert (got.environment or {}) == {"PATH": rendered_path(spec), **dict(spec.app.env), **dict(p.env)}
    if spec.migrate:
        assert groups[f"{spec.app.name}_migrate"][0][1].command == spec.migrate.command
    # Every group supervisor sees was built by the renderer (assert_no_injection); these must be among them.
    names = Names(spec.app.name)
    rendered = {names.web, names.listener} | {names.program(p.name) for p in spec.programs}
    assert set(groups) >= rendered | ({names.migrate} if spec.migrate else set())


@FUZZ
@given(specs())
def test_structured_hostile_specs(d):
    spec = parse_or_error(to_toml(d))
    event("valid spec" if spec is not None else "refused")
    if spec is not None:
        assert_no_injection(spec)
        assert_no_injection(spec, fragment=True)
        assert_loads_with_supervisor(spec)


@FUZZ
@given(st.dictionaries(hostile, anything, max_size=4))
def test_random_top_level_tables(d):
    parse_or_error(to_toml(d))


@FUZZ
@given(st.text(max_size=300))
def test_random_text_is_never_a_crash(text):
    parse_or_error(text)


@FUZZ
@given(key=st.sampled_from(["app.directory", "app.python", "app.env.X", "server.bind", "server.uvicorn.root_path",
                            "server.uvicorn.log_config", "server.uvicorn.forwarded_allow_ips",
                            "server.uvicorn.headers", "programs.command", "programs.env.Y", "migrate.command",
                            "supervisord.run_dir"]),
       value=hostile)
def test_every_string_key_with_hostile_text(key, value):
    d = {"app": {"name": "web", "asgi": "main:app"}}
    parts = key.split(".")
    if parts[0] == "programs":
        item = {"name": "p", "command": "x"}
        if parts[1] == "env":
            item["env"] = {parts[2]: value}
        else:
            item[parts[1]] = value
        d["programs"] = [item]
    else:
        node = d
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        if parts[0] == "migrate":
            node.setdefault("command", "x")
    spec = parse_or_error(to_toml(d))
    if spec is None:
        return
    assert_no_injection(spec)
    if key != "supervisord.run_dir":
        assert_loads_with_supervisor(spec)


@pytest.mark.parametrize("evil", [
    "x\n[program:evil]\ncommand=/bin/sh -c id",
    "x\r[program:evil]",
    "x\u2028[program:evil]",
    "x ;\n[program:evil]",
    "/srv/x\x00",
    "x ; injected=1",
    "x # injected",
])
@pytest.mark.parametrize("where", ["app.directory", "app.python", "app.env", "server.bind", "server.uvicorn",
                                   "programs", "migrate", "supervisord.run_dir"])
def test_known_injections_are_refused_with_a_reason(evil, where):
    d = {"app": {"name": "web", "asgi": "main:app"}}
    if where == "app.env":
        d["app"]["env"] = {"X": evil}
    elif where == "server.bind":
        d["server"] = {"bind": "unix:///tmp/" + evil}
    elif where == "server.uvicorn":
        d["server"] = {"uvicorn": {"root_path": evil}}
    elif where == "programs":
        d["programs"] = [{"name": "p", "command": "echo " + evil}]
    elif where == "migrate":
        d["migrate"] = {"command": "echo " + evil}
    elif where == "supervisord.run_dir":
        d["supervisord"] = {"run_dir": "/tmp/" + evil}
    else:
        d["app"][where.split(".")[1]] = "/srv/" + evil
    with pytest.raises(SpecError) as info:
        parse_spec(tomli_w.dumps(d), SRC, SRC_DIR, HOST)
    assert_clear_error(info.value)
    assert any(word in info.value.problem for word in ("line break", "control character", "comment"))


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(d=specs())
def test_cli_render_never_shows_a_traceback(tmp_path_factory, d):
    folder = tmp_path_factory.mktemp("cli")
    d = {**d, "supervisord": {"run_dir": str(folder / "run")}}
    (folder / "supervisor-fastapi.toml").write_text(to_toml(d), encoding="utf-8")
    result = CliRunner().invoke(main, ["render", "-c", str(folder / "supervisor-fastapi.toml"), "-o", "-"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert result.output.startswith("error: ")


# --- inputs that once ended in a traceback (issue 9, point 6) ---------------------------------

ALERT_TEXT = st.one_of(hostile, st.sampled_from(["https://h.example/x", "https://h.example:99999/", "a@b.c", "smtp.x",
                                                 "http://u:p@h/x?t=1", "[x] ", "", "\u00e9@\u00e9.fr"]))


@FUZZ
@given(kind=st.sampled_from(["webhook", "email", "command", "log"]), key=st.sampled_from(
    ["url", "host", "subject_prefix", "from", "to", "username", "command", "path", "user"]),
    value=st.one_of(ALERT_TEXT, st.lists(ALERT_TEXT, max_size=3), anything))
def test_alert_keys_with_hostile_values(kind, key, value):
    base = {"webhook": {"url": "https://h.example/x"}, "email": {"from": "a@b.c", "to": "d@e.f"},
            "command": {"command": "notify", "run_as_root": True}, "log": {}}[kind]
    alert = {"type": kind, **base, key: value}
    spec = parse_or_error(to_toml({"app": {"name": "web", "asgi": "main:app"}, "alerts": [alert]}))
    if spec is None:
        return
    for _, v in spec.alerts[0].options:
        for text in (v if isinstance(v, tuple) else (v,)):
            if isinstance(text, str) and key != "command":
                # Accepted values never carry a line break or NUL into an HTTP or SMTP header.
                assert not any(c in text for c in "\r\n\x00"), (key, text)
    assert_no_injection(spec)


def _nested(depth: int, kind: str) -> str:
    return "x = " + ("[" * depth + "]" * depth if kind == "array" else "{a = " * depth + "1" + "}" * depth)


@settings(max_examples=examples(40), deadline=None)
@given(depth=st.integers(1, 6000), kind=st.sampled_from(["array", "inline"]))
def test_deep_nesting_is_a_clear_error(depth, kind):
    assert parse_or_error(f'[app]\nname = "web"\nasgi = "m:a"\n{_nested(depth, kind)}\n') is None


@FUZZ
@given(digits=st.text("0123456789", min_size=1, max_size=600), unit=st.sampled_from(["", "B", "KB", "GB", "TiB"]),
       key=st.sampled_from(["per_worker", "limit", "budget"]), quoted=st.booleans())
def test_huge_sizes_are_a_clear_error(digits, unit, key, quoted):
    value = f'"{digits}{unit}"' if quoted or unit else digits
    parse_or_error(f'[app]\nname = "web"\nasgi = "m:a"\n[memory]\n{key} = {value}\n')


@FUZZ
@given(port=st.text(st.characters(whitelist_categories=("Nd", "No")), min_size=1, max_size=6))
def test_ports_in_other_scripts_are_a_clear_error(port):
    spec = parse_or_error(to_toml({"app": {"name": "web", "asgi": "m:a"}, "server": {"bind": f"tcp://h:{port}"}}))
    if spec is not None:
        assert port.isascii() and str(spec.server.bind.port) == port.lstrip("0")


PYPROJECT = "/srv/fuzz/pyproject.toml"


@FUZZ
@given(tool=st.one_of(anything, st.dictionaries(st.sampled_from(["supervisor-fastapi", "black", "x"]),
                                                st.one_of(anything, st.dictionaries(hostile, anything, max_size=3)),
                                                max_size=3)))
def test_pyproject_shapes(tool):
    text = to_toml({"project": {"name": "x"}, "tool": tool})
    try:
        parse_spec(text, PYPROJECT, SRC_DIR, HOST, "supervisor-fastapi")
    except UserError as exc:
        assert str(exc).startswith(f"{PYPROJECT}: ") and "\n" not in str(exc), str(exc)


@FUZZ
@given(folder=st.builds(lambda a, b: f"/srv/{a}{b}", hostile, st.sampled_from(["", " ", " ;x", "#", "\n", "/x"])))
def test_spec_folder_paths(folder):
    try:
        spec = parse_spec('[app]\nname = "web"\nasgi = "m:a"\n', folder + "/supervisor-fastapi.toml", folder, HOST)
    except UserError as exc:
        assert "\n" not in str(exc), str(exc)
        return
    assert_no_injection(spec)


# --- sizes, counts and nesting (issue 18): every shape answered fast, refused in one line naming the key --

import time  # noqa: E402

from supervisor_fastapi.spec import limits  # noqa: E402

SIZES = st.sampled_from([0, 1, 100, limits.STRING_CHARS - 1, limits.STRING_CHARS, limits.STRING_CHARS + 1, 20_000,
                         300_000])
COUNTS = st.sampled_from([0, 1, 8, limits.ARRAY_ITEMS - 1, limits.ARRAY_ITEMS, limits.ARRAY_ITEMS + 1, 300])


def _shaped(where: str, size: int, count: int, depth: int) -> dict:
    """A spec with one value of ``size`` characters, or ``count`` items/keys, or ``depth`` levels, at ``where``."""
    d: dict = {"app": {"name": "web", "asgi": "main:app"}}
    text = "v" * max(size, 1)
    if where == "app.env value":
        d["app"]["env"] = {"X": text}
    elif where == "app.env keys":
        d["app"]["env"] = {f"V{i}": "v" for i in range(count)}
    elif where == "programs":
        d["programs"] = [{"name": f"p{i}", "command": "x", "numprocs": 1 + i % 3} for i in range(count)]
    elif where == "program command":
        d["programs"] = [{"name": "p", "command": "x " + text}]
    elif where == "alerts":
        d["alerts"] = [{"type": "log", "name": f"l{i}"} for i in range(count)]
    elif where == "alert to":
        d["alerts"] = [{"type": "email", "from": "a@b.c", "to": ["d@e.f"] * max(count, 1)}]
    elif where == "alert headers":
        d["alerts"] = [{"type": "webhook", "url": "https://h.example/x",
                        "headers": {f"H{i}": "v" * (size % 5000) for i in range(count)}}]
    elif where == "alert url":
        d["alerts"] = [{"type": "webhook", "url": "https://h.example/" + text}]
    elif where == "pass_env":
        d["alerts"] = [{"type": "command", "command": "x", "run_as_root": True,
                        "pass_env": [f"P{i}" for i in range(count)]}]
    elif where == "uvicorn headers":
        d["server"] = {"uvicorn": {"headers": [f"X-H: {'v' * (size % 5000)}"] * count}}
    elif where == "workers x env":
        d["server"] = {"workers": 1 + count}
        d["app"]["env"] = {f"V{i}": "v" * (size % 5000) for i in range(min(count, 70))}
    elif where == "nesting":
        value: object = 1
        for _ in range(depth):
            value = {"a": value}
        d["crash_loop"] = {"programs": {"web": {"restarts": value}}}
    return d


@settings(max_examples=int(os.environ.get("FUZZ_SHAPES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(where=st.sampled_from(["app.env value", "app.env keys", "programs", "program command", "alerts", "alert to",
                              "alert headers", "alert url", "pass_env", "uvicorn headers", "workers x env",
                              "nesting"]),
       size=SIZES, count=COUNTS, depth=st.integers(0, 40))
def test_sizes_counts_and_nesting_are_answered_fast(where, size, count, depth):
    text = to_toml(_shaped(where, size, count, depth))
    started = time.monotonic()
    spec = parse_or_error(text)  # a refusal is one line naming file and key (assert_clear_error)
    parsed = time.monotonic() - started
    event(f"{where}: {'accepted' if spec else 'refused'}")
    assert parsed < 2.0, (where, size, count, depth, parsed)
    if spec is None:
        return
    # Accepted: within every limit, and supervisor's own parser loads its conf quickly too.
    assert len(text) <= limits.SPEC_CHARS and limits.process_problem(spec) is None
    started = time.monotonic()
    assert_no_injection(spec)
    assert time.monotonic() - started < 2.0, (where, size, count)
