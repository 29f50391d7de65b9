"""spec: TOML in, typed records out; every bad input is a SpecError naming the key path."""

import os

import pytest

from supervisor_fastapi.errors import SpecError, UserError
from supervisor_fastapi.spec import (
    Bind,
    Budget,
    HostDefaults,
    find_spec,
    format_size,
    load_spec,
    parse_bind,
    parse_size,
    parse_spec,
)

from ._core_helpers import HOST, data, spec_of

SRC = "/srv/app/supervisor-fastapi.toml"


def err(d, match=None):
    with pytest.raises(SpecError) as info:
        spec_of(d)
    if match:
        assert match in str(info.value), str(info.value)
    return info.value


def test_minimal_spec_defaults():
    s = spec_of(data())
    assert s.source == SRC and s.base_dir == "/srv/app"
    assert s.app.name == "web" and s.app.asgi == "main:app" and not s.app.factory
    assert s.app.directory == "/srv/app" and s.app.python == HOST.python
    assert s.app.env == () and s.app.user is None
    assert s.server.bind == Bind(kind="tcp", host="127.0.0.1", port=8000)
    assert s.server.workers == HOST.cpu_count  # "auto"
    assert s.server.graceful_timeout == 30.0 and s.server.uvicorn == () and s.server.backlog == 2048
    assert s.memory.per_worker is None and s.memory.budget == Budget(fraction=0.9)
    assert s.programs == () and s.migrate is None and s.alerts == ()
    assert s.supervisord.run_dir == "/srv/app/run" and s.run_dir == "/srv/app/run"


def test_full_spec():
    s = spec_of(data(
        app={"asgi": "pkg.main:create_app()", "directory": "src", "python": "venv/bin/python",
             "env": {"B": "two", "A": 1, "C": True}, "user": "www-data"},
        server={"bind": "unix:///run/shop/web.sock", "workers": 3, "graceful_timeout": 12.5,
                "socket_mode": "0660", "socket_owner": "www-data:www-data", "backlog": 100,
                "uvicorn": {"proxy_headers": True, "forwarded_allow_ips": ["10.0.0.1", "10.0.0.2"],
                            "root_path": "/api", "timeout_keep_alive": 7, "log_level": "warning"}},
        memory={"per_worker": "512MB", "budget": "2GB"},
        programs=[{"name": "beat", "command": "celery beat", "numprocs": 2, "env": {"X": "1"}}],
        migrate={"command": "alembic upgrade head"},
        supervisord={"run_dir": "/var/run/shop", "log_level": "debug"},
    ))
    assert s.app.asgi == "pkg.main:create_app" and s.app.factory
    assert s.app.directory == "/srv/app/src" and s.app.python == "/srv/app/venv/bin/python"
    assert s.app.env == (("A", "1"), ("B", "two"), ("C", "true"))
    assert s.server.bind == Bind(kind="unix", path="/run/shop/web.sock")
    assert s.server.workers == 3 and s.server.graceful_timeout == 12.5 and s.server.backlog == 100
    assert dict(s.server.uvicorn) == {"proxy_headers": True, "forwarded_allow_ips": ("10.0.0.1", "10.0.0.2"),
                                      "root_path": "/api", "timeout_keep_alive": 7, "log_level": "warning"}
    assert s.memory.per_worker == 512 * 1024**2 and s.memory.budget == Budget(bytes=2 * 1024**3)
    assert s.programs[0].numprocs == 2 and s.programs[0].env == (("X", "1"),)
    assert s.run_dir == "/var/run/shop" and s.supervisord.log_level == "debug"


def test_app_python_bare_name_is_kept_and_relative_path_resolves():
    assert spec_of(data(app={"python": "python3"})).app.python == "python3"
    assert spec_of(data(app={"python": "/usr/bin/python3"})).app.python == "/usr/bin/python3"


def test_factory_flag():
    assert spec_of(data(app={"asgi": "m:make", "factory": True})).app.factory


@pytest.mark.parametrize("d, where, match", [
    ({}, "app", "is required"),
    ({"app": {"asgi": "m:app"}}, "app.name", "is required"),
    ({"app": {"name": "web"}}, "app.asgi", "is required"),
    (data(app={"name": "Web"}), "app.name", "is not a name"),
    (data(app={"name": "1web"}), "app.name", "is not a name"),
    (data(app={"name": "w" * 41}), "app.name", "longer than 40"),
    (data(app={"name": 3}), "app.name", "not an integer 3"),
    (data(app={"asgi": "main"}), "app.asgi", "import string"),
    # app.python's folder goes first on every program's PATH, inside supervisord's environment=
    (data(app={"python": '/srv/a"b/bin/python'}), "app.python", "double quote"),
    (data(app={"python": "/srv/a:b/bin/python"}), "app.python", "PATH separator"),
    (data(app={"asgi": "main:app; rm"}), "app.asgi", "import string"),
    (data(app={"user": "root:root"}), "app.user", "takes no group"),
    # `$` matches before a trailing newline: patterns must anchor with \Z.
    (data(app={"asgi": "main:app\n"}), "app.asgi", "import string"),
    (data(app={"name": "web\n"}), "app.name", "is not a name"),
    (data(app={"user": "root\n"}), "app.user", "user name"),
    (data(app={"env": {"A\n": "x"}}), "app.env.'A\\n'", "environment variable name"),
    (data(server={"bind": "tcp://h\n:80"}), "server.bind", "host name"),
    (data(server={"bind": "unix:///a.sock", "socket_mode": "0660\n"}), "server.socket_mode", "octal"),
    (data(app={"user": "a b"}), "app.user", "user name"),
    (data(app={"python": ""}), "app.python", "is empty"),
    (data(app={"python": "/x\n[program:evil]"}), "app.python", "line break"),
    (data(app={"directory": "a ;b"}), "app.directory", "comment"),
    (data(app={"env": {"A B": "x"}}), "app.env.A B", "environment variable name"),
    (data(app={"env": {"SUPERVISOR_SERVER_URL": "x"}}), "app.env.SUPERVISOR_SERVER_URL", "set by supervisord"),
    (data(app={"env": {"A": 'say "hi"'}}), "app.env.A", "double quote"),
    (data(app={"env": {"A": [1]}}), "app.env.A", "must be a string"),
    (data(app={"env": "A=1"}), "app.env", "must be a table"),
    (data(app={"nmae": "x"}), "app.nmae", "did you mean 'name'"),
    (data(sever={}), "sever", "did you mean 'server'"),
    (data(server={"workers": 0}), "server.workers", "between 1 and 512"),
    (data(server={"workers": 10**30}), "server.workers", "between 1 and 512"),
    (data(server={"workers": "many"}), "server.workers", '"auto"'),
    (data(server={"workers": 2.0}), "server.workers", "an integer >= 1"),
    (data(server={"workers": True}), "server.workers", "not a boolean"),
    (data(server={"worker": 2}), "server.worker", "did you mean 'workers'"),
    (data(server={"graceful_timeout": -1}), "server.graceful_timeout", "between 0 and 3600"),
    (data(server={"graceful_timeout": float("nan")}), "server.graceful_timeout", "finite"),
    (data(server={"graceful_timeout": float("inf")}), "server.graceful_timeout", "finite"),
    (data(server={"bind": "http://x:1"}), "server.bind", "tcp:// or unix://"),
    (data(server={"bind": "tcp://127.0.0.1"}), "server.bind", "host and a port"),
    (data(server={"bind": "tcp://*:80"}), "server.bind", "0.0.0.0"),
    (data(server={"bind": "tcp://[::1]:80"}), "server.bind", "IPv6"),
    (data(server={"bind": "tcp://127.0.0.1:0"}), "server.bind", "1 to 65535"),
    (data(server={"bind": "tcp://127.0.0.1:70000"}), "server.bind", "1 to 65535"),
    (data(server={"bind": "tcp://a b:80"}), "server.bind", "host name"),
    (data(server={"bind": "unix://"}), "server.bind", "needs a path"),
    (data(server={"bind": "unix:///" + "x" * 120}), "server.bind", "too long"),
    (data(server={"socket_mode": "0660"}), "server.socket_mode", "only applies to unix"),
    (data(server={"bind": "unix:///a.sock", "socket_mode": "rw"}), "server.socket_mode", "octal"),
    (data(server={"uvicorn": {"port": 80}}), "server.uvicorn.port", "set server.bind"),
    (data(server={"uvicorn": {"workers": 2}}), "server.uvicorn.workers", "set server.workers"),
    (data(server={"uvicorn": {"fd": 3}}), "server.uvicorn.fd", "fd 0"),
    (data(server={"uvicorn": {"proxy_header": True}}), "server.uvicorn.proxy_header", "did you mean 'proxy_headers'"),
    (data(server={"uvicorn": {"loop": "tokio"}}), "server.uvicorn.loop", "must be one of"),
    (data(server={"uvicorn": {"proxy_headers": "yes"}}), "server.uvicorn.proxy_headers", "true or false"),
    (data(server={"uvicorn": {"limit_concurrency": -1}}), "server.uvicorn.limit_concurrency", "negative"),
    (data(server={"uvicorn": {"ws_ping_interval": float("nan")}}), "server.uvicorn.ws_ping_interval", "finite"),
    (data(server={"uvicorn": {"forwarded_allow_ips": [1]}}), "server.uvicorn.forwarded_allow_ips", "strings"),
    (data(server={"uvicorn": {"root_path": "/a #b"}}), "server.uvicorn.root_path", "comment"),
    (data(server={"uvicorn": "fast"}), "server.uvicorn", "must be a table"),
    (data(server={"uvicorn": {"ssl_keyfile_password_env": "hunter2!"}}), "server.uvicorn.ssl_keyfile_password_env",
     "never the value itself"),
    (data(server={"uvicorn": {"ssl_keyfile_password": "hunter2"}}), "server.uvicorn.ssl_keyfile_password",
     "did you mean 'ssl_keyfile_password_env'"),
    (data(memory={"per_worker": "lots"}), "memory.per_worker", "is not a size"),
    (data(memory={"per_worker": 0}), "memory.per_worker", "larger than zero"),
    (data(memory={"budget": "120%"}), "memory.budget", "between 0 and 100"),
    (data(memory={"budget": "x%"}), "memory.budget", "percentage"),
    (data(programs={"name": "x"}), "programs", "array of tables"),
    (data(programs=[{"name": "web", "command": "x"}]), "programs[0].name", "already used"),
    (data(programs=[{"name": "a", "command": "x"}, {"name": "a", "command": "y"}]), "programs[1].name",
     "already used"),
    (data(programs=[{"name": "a"}]), "programs[0].command", "is required"),
    (data(programs=[{"name": "a", "command": " "}]), "programs[0].command", "is empty"),
    (data(programs=[{"name": "a", "command": "echo 'x"}]), "programs[0].command", "split"),
    (data(programs=[{"name": "a", "command": "x", "numprocs": 0}]), "programs[0].numprocs", "between"),
    (data(migrate={"command": "x\n[program:evil]\ncommand=rm"}), "migrate.command", "line break"),
    (data(supervisord={"run_dir": "/" + "r" * 100}), "supervisord.run_dir", "too long"),
    (data(supervisord={"log_level": "verbose"}), "supervisord.log_level", "must be one of"),
    (data(alerts=[{"type": ["x"]}]), "alerts[0].type", "is not an alert type"),
    (data(alerts=[{"type": "webhok", "url": "http://x"}]), "alerts[0].type", "did you mean 'webhook'"),
    (data(crash_loop={"programs": {"wbe": {}}}), "crash_loop.programs.wbe", "did you mean 'web'"),
])
def test_bad_input_names_the_key_and_the_problem(d, where, match):
    e = err(d, match)
    assert e.source == SRC and e.key == where, str(e)
    assert str(e).startswith(f"{SRC}: {where}: ")


def test_spec_error_is_a_user_error_with_exit_status_2():
    e = err(data(server={"worker": 2}))
    assert isinstance(e, UserError) and e.exit_code == 2
    assert str(e) == f"{SRC}: server.worker: unknown key; did you mean 'workers'?"


def test_unknown_key_without_close_match_lists_known_keys():
    assert "known keys: bind, workers" in str(err(data(server={"zzzzzz": 1})))


@pytest.mark.parametrize("text, size", [
    ("1GB", 1024**3), ("512MB", 512 * 1024**2), ("512MiB", 512 * 1024**2), ("1.5G", int(1.5 * 1024**3)),
    ("2048", 2048), ("10K", 10240), ("1 TB", 1024**4), ("7B", 7), ("3gb", 3 * 1024**3),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GB", "1XB", "-1GB", "1e3GB", "one"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_size():
    assert format_size(4 * 1024**3) == "4 GB"
    assert format_size(512 * 1024**2) == "512 MB"
    assert format_size(10) == "10 B"


def test_budget_percent_and_bytes():
    assert Budget(fraction=0.5).of(1000) == 500 and Budget(fraction=0.5).describe() == "50% of RAM"
    assert Budget(bytes=3 * 1024**3).of(123) == 3 * 1024**3 and Budget(bytes=3 * 1024**3).describe() == "3 GB"
    s = spec_of(data(memory={"budget": "80%", "per_worker": 2**30}))
    assert s.memory.budget == Budget(fraction=0.8) and s.memory.per_worker == 2**30


def test_parse_bind():
    assert parse_bind("tcp://0.0.0.0:80", "/b") == Bind("tcp", "0.0.0.0", 80)
    assert parse_bind("tcp://localhost:8000", "/b").url == "tcp://localhost:8000"
    assert parse_bind("unix:///run/x.sock", "/b") == Bind("unix", path="/run/x.sock")
    assert parse_bind("unix://rel/x.sock", "/b").path == "/b/rel/x.sock"


def test_workers_auto_uses_the_injected_cpu_count():
    d = data(server={"workers": "auto"})
    assert spec_of(d).server.workers == 4
    assert parse_spec('[app]\nname="web"\nasgi="m:a"\n', SRC, "/srv/app", HostDefaults("/p", 7)).server.workers == 7


def test_invalid_toml_names_the_file():
    with pytest.raises(SpecError, match=r"supervisor-fastapi.toml: is not valid TOML: .*line 1"):
        parse_spec("[app\n", SRC, "/srv/app", HOST)


def test_pyproject_table():
    text = '[project]\nname="x"\n[tool.supervisor-fastapi.app]\nname="web"\nasgi="m:app"\n'
    s = parse_spec(text, "/p/pyproject.toml", "/p", HOST, table="supervisor-fastapi")
    assert s.app.name == "web"
    with pytest.raises(SpecError, match="tool.supervisor-fastapi: table not found"):
        parse_spec("[project]\n", "/p/pyproject.toml", "/p", HOST, table="supervisor-fastapi")


def test_find_and_load_spec(tmp_path):
    with pytest.raises(UserError, match="supervisor-fastapi init"):
        find_spec(None, str(tmp_path))
    (tmp_path / "pyproject.toml").write_text('[tool.supervisor-fastapi.app]\nname="py"\nasgi="m:app"\n')
    assert find_spec(None, str(tmp_path)) == (str(tmp_path / "pyproject.toml"), "supervisor-fastapi")
    assert load_spec(cwd=str(tmp_path), host=HOST).app.name == "py"
    (tmp_path / "supervisor-fastapi.toml").write_text('[app]\nname="own"\nasgi="m:app"\n')
    assert load_spec(cwd=str(tmp_path), host=HOST).app.name == "own"  # the own file wins
    other = tmp_path / "sub" / "x.toml"
    other.parent.mkdir()
    other.write_text('[app]\nname="other"\nasgi="m:app"\n')
    s = load_spec("sub/x.toml", cwd=str(tmp_path), host=HOST)
    assert s.app.name == "other" and s.base_dir == str(other.parent) and s.run_dir == str(other.parent / "run")
    with pytest.raises(UserError, match="no such spec file"):
        load_spec("missing.toml", cwd=str(tmp_path))


def test_pyproject_without_the_table_is_not_a_spec(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    with pytest.raises(UserError, match="no supervisor-fastapi.toml"):
        find_spec(None, str(tmp_path))


def test_undecodable_spec_file_is_a_user_error(tmp_path):
    (tmp_path / "supervisor-fastapi.toml").write_bytes(b"\xff\xfe[app]")
    with pytest.raises(UserError, match="cannot read"):
        load_spec(cwd=str(tmp_path))


def test_spec_records_are_frozen():
    s = spec_of(data())
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        s.app.name = "x"  # type: ignore[misc]


def test_parsing_is_pure(tmp_path):
    # Relative paths resolve against base_dir, not the process's cwd; nothing is created.
    before = os.listdir(tmp_path)
    s = spec_of(data(app={"directory": "."}), base_dir=str(tmp_path))
    assert s.app.directory == str(tmp_path) and os.listdir(tmp_path) == before


def _known_keys(d):
    """The keys a table accepts, read from the loader's own 'unknown key' message."""
    with pytest.raises(SpecError) as info:
        spec_of(d)
    return str(info.value).split("known keys: ")[1].split(", ")


def test_docs_spec_md_lists_every_key():
    from supervisor_fastapi.spec.load import UVICORN_OWNED

    doc_path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "spec.md")
    with open(doc_path, encoding="utf-8") as f:
        doc = f.read()
    z = "zzqqxxjj"
    tables = {
        "app": data(app={z: 1}), "server": data(server={z: 1}), "memory": data(memory={z: 1}),
        "programs[]": data(programs=[{"name": "a", "command": "x", z: 1}]),
        "migrate": data(migrate={"command": "x", z: 1}), "supervisord": data(supervisord={z: 1}),
        "crash_loop": data(crash_loop={z: 1}), "listener": data(listener={z: 1}),
        "kubernetes": data(kubernetes={z: 1}),
    }
    missing = [f"{t}.{k}" for t, d in tables.items() for k in _known_keys(d) if f"`{t}.{k}" not in doc]
    for kind in ("webhook", "email", "command", "log"):
        missing += [f"alerts[].{k}" for k in _known_keys(data(alerts=[{"type": kind, z: 1}]))
                    if f"`alerts[].{k}`" not in doc]
    for k in _known_keys(data(server={"uvicorn": {z: 1}})):
        if (f"`server.uvicorn.{k}`" if k not in UVICORN_OWNED else f"`{k}`") not in doc:
            missing.append(f"server.uvicorn.{k}")
    assert not missing, f"docs/spec.md does not document: {', '.join(missing)}"


# --- [kubernetes] ------------------------------------------------------------------------


def test_kubernetes_table_defaults_and_values():
    k = spec_of(data()).kubernetes
    assert (k.image, k.replicas, k.namespace, k.service_type, k.port, k.service_port) == \
        (None, 2, None, "ClusterIP", 8000, 80)
    assert k.run_as_user == 10001 and k.prestop_delay == 5 and k.secret_env == ()
    table = {"image": "r/a:1", "secret_env": ["B", "A", "B"], "service_type": "NodePort"}
    k = spec_of(data(app={"env": {"B": "x", "A": "y"}}, kubernetes=table)).kubernetes
    assert k.image == "r/a:1" and k.secret_env == ("A", "B") and k.service_type == "NodePort"


@pytest.mark.parametrize("table,match", [
    ({"imag": "x"}, "kubernetes.imag: unknown key; did you mean 'image'?"),
    ({"replicas": "2"}, "kubernetes.replicas: must be an integer, not a string '2'"),
    ({"replicas": True}, "kubernetes.replicas: must be an integer, not a boolean"),
    ({"service_type": "Loadbalancer"}, "kubernetes.service_type: must be one of ClusterIP, NodePort, LoadBalancer; "
                                       "did you mean 'LoadBalancer'?"),
    ({"port": 80}, "kubernetes.port: must be between 1024 and 65535, not 80; a non-root container"),
    ({"image": "has space:1"}, "kubernetes.image: 'has space:1' is not an image reference"),
    ({"namespace": "Shop"}, "kubernetes.namespace: 'Shop' is not a namespace name"),
    ({"secret_env": ["DATABASE_UR"]}, "kubernetes.secret_env[0]: 'DATABASE_UR' is not in app.env, migrate.env or "
                                      "programs[].env; did you mean 'DATABASE_URL'?"),
    ({"secret_env": "DATABASE_URL"}, "kubernetes.secret_env: must be an array of environment variable names"),
    ({"run_as_user": 0}, "kubernetes.run_as_user: 0 is root"),
    ({"health_path": "healthz"}, "kubernetes.health_path: 'healthz' is not a URL path"),
    ({"directory": "app"}, "kubernetes.directory: 'app' is not an absolute path inside the image"),
    ({"prestop_delay": 1.5}, "kubernetes.prestop_delay: must be an integer"),
    ({"secret": "Bad_Name"}, "kubernetes.secret: 'Bad_Name' is not a Secret name"),
])
def test_kubernetes_table_errors(table, match):
    err(data(app={"env": {"DATABASE_URL": "x"}}, kubernetes=table), match)


def test_spec_records_the_keys_the_file_sets():
    s = spec_of(data(server={"bind": "tcp://0.0.0.0:80"}, programs=[{"name": "a", "command": "x"}], listener={}))
    assert s.keys == {"app.name", "app.asgi", "server.bind", "programs[0].name", "programs[0].command", "listener"}


def test_supervisord_serverurl_makes_a_fragment_deployment_with_its_defaults():
    s = spec_of(data(supervisord={"serverurl": "unix:///var/run/supervisor.sock"}))
    assert s.supervisord.hosting().shared and s.supervisord.serverurl == "unix:///var/run/supervisor.sock"
    assert s.supervisord.fragment == "/etc/supervisor/conf.d/web.conf" and s.supervisord.plugins is False
    s = spec_of(data(supervisord={"serverurl": "http://127.0.0.1:9001", "fragment": "conf.d/web.ini",
                                  "plugins": True}))
    assert s.supervisord.fragment == "/srv/app/conf.d/web.ini" and s.supervisord.plugins
    assert not spec_of(data()).supervisord.hosting().shared


SHARED = {"serverurl": "unix:///var/run/supervisor.sock"}


@pytest.mark.parametrize("supervisord, flags, expected", [
    # (shared, fragment, plugins): the supervisord `up` starts reads a whole conf, plugins on.
    ({}, {}, (False, False, True)),
    ({}, {"with_plugins": True}, (False, False, True)),
    # `render --fragment` of that spec, installed by hand in someone else's supervisord.
    ({}, {"fragment": True}, (False, True, False)),
    ({}, {"fragment": True, "with_plugins": True}, (False, True, True)),
    # supervisord.serverurl: always a fragment; plugins as supervisord.plugins says, or --with-plugins.
    (SHARED, {}, (True, True, False)),
    ({**SHARED, "plugins": True}, {}, (True, True, True)),
    (SHARED, {"fragment": True}, (True, True, False)),
    (SHARED, {"with_plugins": True}, (True, True, True)),
])
def test_own_or_shared_is_chosen_once_from_the_spec_and_the_render_flags(supervisord, flags, expected):
    h = spec_of(data(supervisord=supervisord)).supervisord.hosting(**flags)
    assert (h.shared, h.fragment, h.plugins) == expected
    assert h.own == (not h.shared and not h.fragment)


@pytest.mark.parametrize("table, match", [
    ({"serverurl": "/var/run/supervisor.sock"}, "supervisord.serverurl: '/var/run/supervisor.sock' is not a "
                                                "supervisord address; use unix:///path"),
    ({"serverurl": "tcp://127.0.0.1:9001"}, "is not a supervisord address"),
    ({"serverurl": "unix:///a b"}, "is not a supervisord address"),
    ({"fragment": "/etc/supervisor/conf.d/web.conf"}, "supervisord.fragment: applies to a conf.d fragment only"),
    ({"plugins": True}, "supervisord.plugins: applies to a conf.d fragment only; add serverurl"),
    ({"serverurl": "unix:///var/run/supervisor.sock", "log_level": "debug"},
     "supervisord.log_level: is the running supervisord's own setting"),
    ({"serverurl": "unix:///var/run/supervisor.sock", "plugins": "yes"}, "supervisord.plugins"),
])
def test_supervisord_serverurl_keys_refused_with_the_fix(table, match):
    err(data(supervisord=table), match)


def test_a_fragment_for_serverurl_names_up_in_its_header(tmp_path):
    from click.testing import CliRunner

    from supervisor_fastapi.cli.main import main

    spec = tmp_path / "supervisor-fastapi.toml"
    spec.write_text(f'[app]\nname = "web"\nasgi = "main:app"\n[supervisord]\nserverurl = "unix:///nowhere.sock"\n'
                    f'fragment = "{tmp_path}/web.conf"\n')
    out = CliRunner().invoke(main, ["render", "-c", str(spec), "-o", "-"])
    assert out.exit_code == 0, out.output
    assert f"run `supervisor-fastapi up -c {spec}`" in out.output
    assert "[supervisord]" not in out.output and "[rpcinterface:fastapi_web]" not in out.output
    spec.write_text(spec.read_text() + "plugins = true\n")
    out = CliRunner().invoke(main, ["render", "-c", str(spec), "-o", "-"])
    assert "[rpcinterface:fastapi_web]" in out.output and "[ctlplugin:" not in out.output
    out = CliRunner().invoke(main, ["systemd-unit", "-c", str(spec)])
    assert out.exit_code == 2 and "supervisord.serverurl is set" in out.output
