"""The plugin and watchdog sections: when they are rendered, and that supervisor loads them."""

from supervisor_fastapi.generate.conf import render
from supervisor_fastapi.spec import HostDefaults, parse_spec
from supervisor_fastapi.spec.model import Hosting

BASE = ('[app]\nname="web"\nasgi="m:app"\n[server]\nbind="tcp://127.0.0.1:8000"\nworkers=2\n{server}'
        '[supervisord]\nrun_dir="{run_dir}"\n{memory}')


def spec(server="", memory="", run_dir="/tmp/r"):
    return parse_spec(BASE.format(server=server, memory=memory, run_dir=run_dir), "/x/s.toml", "/x",
                      HostDefaults(python="/py", cpu_count=2))


# `render --fragment` of this spec (its supervisord is its own): no plugins unless asked.
FRAGMENT = Hosting(shared=False, fragment=True, plugins=False)


def test_standalone_conf_loads_both_plugins_with_the_controllers_settings():
    from supervisor_fastapi.contracts.settings import ControlConfig
    from supervisor_fastapi.generate.conf import control_config

    text = render(spec(), "x")
    assert ("[rpcinterface:fastapi_web]\nsupervisor.rpcinterface_factory=supervisor_fastapi.plugins.rpc:"
            "make_rpcinterface\nrun_dir=/tmp/r\napp=web\nweb=web\nstate_dir=/tmp/r/workers\n") in text
    assert ("[ctlplugin:fastapi]\nsupervisor.ctl_factory=supervisor_fastapi.plugins.ctl:make_ctlplugin\napp=web"
            in text)
    section = text.split("[rpcinterface:fastapi_web]\n")[1].split("\n\n")[0]
    options = dict(line.split("=", 1) for line in section.splitlines())
    assert ControlConfig.from_options(options) == control_config(spec())


def test_fragment_leaves_plugins_out_unless_asked():
    assert "rpcinterface:fastapi" not in render(spec(), "x", FRAGMENT)
    assert "ctlplugin:fastapi" not in render(spec(), "x", FRAGMENT)
    text = render(spec(), "x", spec().supervisord.hosting(fragment=True, with_plugins=True))
    # supervisorctl never reads [include]d files: the ctlplugin goes in the main conf by hand.
    assert "[rpcinterface:fastapi_web]" in text and "[ctlplugin:fastapi]" not in text
    assert "[supervisord]" not in text


def test_watchdog_only_when_a_limit_is_set():
    assert "web_watchdog" not in render(spec(), "x")
    text = render(spec(memory='[memory]\nlimit="512MB"\ncheck_interval=2\n'), "x")
    assert ("command=/py -m supervisor_fastapi.runtime.watchdog --group web --workers 2 --state-dir /tmp/r/workers "
            "--memo /tmp/r/watchdog-state.json --memory-limit 536870912 --check-interval 2 --limit-checks 2\n") in text
    text = render(spec(server="heartbeat_timeout=15\n"), "x", FRAGMENT)
    assert "[program:web_watchdog]" in text and "--heartbeat-timeout 15\n" in text


def test_supervisor_loads_the_conf_with_plugins_and_watchdog(tmp_path):
    from supervisor_fastapi.cli import checks
    from supervisor_fastapi.cli.deploy import make_dirs

    s = spec(server="heartbeat_timeout=15\n", memory='[memory]\nlimit="1GB"\n', run_dir=str(tmp_path / "r"))
    make_dirs(s)
    text = render(s, "x")
    assert checks.load_with_supervisor(text) is None
