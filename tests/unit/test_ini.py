"""ini: every value reaching supervisord.conf is escaped or refused here."""

import shlex

import pytest

from supervisor_fastapi.generate import ini

from ._core_helpers import raw_sections


@pytest.mark.parametrize("text, reason", [
    ("a\nb", "line break"),
    ("a\rb", "line break"),
    ("a\n[program:evil]", "line break"),
    ("a\x00b", "control character"),
    ("a\x1bb", "control character"),
    ("a\x0bb", "control character"),
    ("a\x0cb", "control character"),
    ("a\x85b", "control character"),
    ("a\u2028b", "control character"),
    ("a\u2029b", "control character"),
    ("a ;b", "comment"),
    ("a #b", "comment"),
    ("a\t;b", "comment"),
    (" leading", "whitespace"),
    ("trailing ", "whitespace"),
])
def test_problem_with_refuses_what_the_parser_cannot_carry(text, reason):
    problem = ini.problem_with(text)
    assert problem and reason in problem
    with pytest.raises(ini.UnsafeValue, match=reason):
        ini.escape(text)


@pytest.mark.parametrize("text", ["plain", "a;b", "a#b", "/srv/a b/c", "ünïcødé", "x=y,z", "'q'", '"dq"'])
def test_safe_values_pass(text):
    assert ini.problem_with(text) is None


def test_escape_doubles_percent():
    assert ini.escape("50%") == "50%%"
    assert ini.escape("%(here)s") == "%%(here)s"


def test_logfile_quadruples_percent_because_supervisord_expands_log_paths_twice():
    assert ini.logfile("/run/a%b/x.log") == "/run/a%%%%b/x.log"
    with pytest.raises(ini.UnsafeValue):
        ini.logfile("/run/a\nb")


@pytest.mark.parametrize("value, reason", [
    ('has "dq"', "double quote"),
    ("back\\slash", "backslash"),
    ("a\nb", "line break"),
    ("x ;y", "comment"),
    ("'single'", "single quote"),
    ("'lead", "single quote"),
    ("trail'", "single quote"),
])
def test_environment_refuses_unquotable_values(value, reason):
    assert reason in ini.env_value_problem(value)
    with pytest.raises(ini.UnsafeValue, match=reason):
        ini.environment({"A": value})


def test_environment_always_double_quotes_sorted_and_escapes_percent():
    assert ini.environment({"B": "x y", "A": "$HOME/x", "C": "50%"}) == 'A="$HOME/x",B="x y",C="50%%"'


def test_environment_refuses_bad_names():
    with pytest.raises(ini.UnsafeValue, match="name"):
        ini.environment({"A-B": "x"})


def test_environment_round_trips_through_supervisor():
    from supervisor.datatypes import dict_of_key_value_pairs
    from supervisor.options import expand

    env = {"A": "$HOME/x", "B": "a,b=c d", "C": "50%", "D": "it's", "E": "", "F": " x\tü "}
    text = ini.environment(env)
    assert dict_of_key_value_pairs(expand(text, {}, "environment")) == env


@pytest.mark.parametrize("argv", [
    ["/opt/a b/python", "-m", "mod"],
    ["echo", "50%", "%(here)s", "it's", 'say "hi"', "a;b", "$HOME", "*"],
    ["x", ""],
])
def test_command_splits_back_into_the_same_argv(argv):
    from supervisor.options import expand

    text = ini.command(argv)
    assert shlex.split(expand(text, {}, "command")) == argv


@pytest.mark.parametrize("arg", ["a\nb", "a ;b", "x #y", "\x00"])
def test_command_refuses_unsafe_args(arg):
    with pytest.raises(ini.UnsafeValue):
        ini.command(["echo", arg])


def test_raw_command_checks_splits_and_escapes():
    assert ini.raw_command("alembic upgrade head") == "alembic upgrade head"
    assert ini.raw_command("echo 100%") == "echo 100%%"
    with pytest.raises(ini.UnsafeValue, match="split"):
        ini.raw_command("echo 'unclosed")
    with pytest.raises(ini.UnsafeValue, match="comment"):
        ini.raw_command("echo a ; rm -rf /")


def test_render_joins_sections_with_header():
    text = ini.render([("a", [("x", "1")]), ("program:b", [("command", "c")])], header=["gen", ""])
    assert text == "; gen\n;\n\n[a]\nx=1\n\n[program:b]\ncommand=c\n"
    assert raw_sections(text) == {"a": {"x": "1"}, "program:b": {"command": "c"}}


@pytest.mark.parametrize("name", ["a]\n[b", "a b", "", "a;b", "[x]"])
def test_render_refuses_unsafe_section_names(name):
    with pytest.raises(ini.UnsafeValue, match="section name"):
        ini.render([(name, [])])


@pytest.mark.parametrize("key", ["A", "a b", "a=b", "", "x\ny"])
def test_render_refuses_unsafe_option_names(key):
    with pytest.raises(ini.UnsafeValue, match="option name"):
        ini.render([("s", [(key, "v")])])


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x00b"])
def test_render_refuses_line_breaks_in_values_as_a_last_line_of_defence(value):
    with pytest.raises(ini.UnsafeValue, match="line break"):
        ini.render([("s", [("k", value)])])


def test_render_refuses_unsafe_header_lines():
    with pytest.raises(ini.UnsafeValue):
        ini.render([("s", [])], header=["x\n[program:evil]"])


def test_boolean():
    assert ini.boolean(True) == "true" and ini.boolean(False) == "false"
