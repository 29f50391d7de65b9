"""The `supervisor-fastapi` command: a thin click layer, each body one call into the core."""

import functools
import json
import os
import shlex
import sys
import time
import xmlrpc.client
from typing import Any, Callable, Optional, TypeVar
from xml.parsers.expat import ExpatError

import click

from .. import __version__
from ..errors import DeployError, UserError
from ..generate import systemd
from ..generate.conf import render
from ..generate.ini import UnsafeValue
from ..layout import Layout, Names
from ..spec import SPEC_FILENAME, Spec, load_spec
from ..spec.model import Hosting
from . import checks, control, deploy, kube

F = TypeVar("F", bound=Callable[..., Any])


CONFIG_HELP = f"Spec file (default: ./{SPEC_FILENAME}, or [tool.supervisor-fastapi] in ./pyproject.toml)."


def _group_config(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[str]:
    """``-c`` after the subcommand wins; else the one given before it (``supervisor-fastapi -c x status``)."""
    if value is not None:
        return value
    return ctx.find_root().params.get("config")


def config_option(f: F) -> F:
    return click.option("-c", "--config", "config", metavar="PATH", default=None, callback=_group_config,
                        help=CONFIG_HELP)(f)


def user_errors(f: F) -> F:
    """Turn UserError into a message on stderr and exit status 2, never a traceback."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except UserError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except UnsafeValue as exc:
            # The loader refuses such values with the key; this is the net under it.
            click.secho(f"error: a value cannot be written to supervisord.conf: {exc}", fg="red", err=True)
            sys.exit(UserError.exit_code)
        except xmlrpc.client.Fault as exc:
            # supervisord refused a call the command did not expect to fail: say what it said.
            click.secho(f"error: supervisord refused: {exc.faultString}", fg="red", err=True)
            sys.exit(DeployError.exit_code)
        except (xmlrpc.client.Error, ExpatError) as exc:
            # An answer that is not XML-RPC (an HTTP 500, a garbled body): one line, never a traceback.
            click.secho(f"error: supervisord's answer could not be read: {exc}", fg="red", err=True)
            sys.exit(DeployError.exit_code)
        except OSError as exc:
            # A path the user gave (or the spec implies) that cannot be read or written:
            # `-o /missing/dir/x.conf`, a run_dir under a read-only folder, ...
            where = exc.filename2 or exc.filename
            click.secho(f"error: {where}: {exc.strerror}" if where and exc.strerror else f"error: {exc}",
                        fg="red", err=True)
            sys.exit(UserError.exit_code)

    return wrapper  # type: ignore[return-value]


def progress(message: str) -> None:
    click.echo(f"  {message}", err=True)


def regenerate_command(config: Optional[str], output: Optional[str], fragment: bool = False,
                       target: str = kube.TARGETS[0]) -> str:
    """The command a generated file's header names for regenerating it."""
    words = ["supervisor-fastapi", "render"] + (["--target", target] if target != kube.TARGETS[0] else [])
    if config:
        words += ["-c", config]
    if output:
        words += ["-o", output]
    if fragment:
        words.append("--fragment")
    return " ".join(shlex.quote(w) for w in words)


def up_command(config: Optional[str]) -> str:
    """What a fragment of a spec with supervisord.serverurl names: `up` writes and applies it."""
    return " ".join(shlex.quote(w) for w in ["supervisor-fastapi", "up"] + (["-c", config] if config else []))


def target_option(f: F) -> F:
    return click.option("--target", type=click.Choice(kube.TARGETS), default=kube.TARGETS[0], show_default=True,
                        help="supervisord: one host; kubernetes: manifests for a cluster (docs/kubernetes.md); "
                             "nginx, caddy: the [https] site for an OS-packaged proxy (docs/https.md).")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="supervisor-fastapi")
@click.option("-c", "--config", "config", metavar="PATH", default=None, help=CONFIG_HELP + " Also accepted "
              "after the subcommand.")
def main(config: Optional[str]) -> None:
    """Run FastAPI/ASGI apps under Supervisor: replicated Uvicorn workers on one shared socket."""


@main.command()
@click.option("-c", "--config", "config", metavar="PATH", default=None, callback=_group_config,
              help=f"Where to write the spec [default: {SPEC_FILENAME}]")
@click.option("--name", default=None, help="Program name prefix (default: this folder's name).")
@click.option("--asgi", default="main:app", show_default=True, help="ASGI import string.")
@click.option("--force", is_flag=True, help="Overwrite an existing spec.")
@user_errors
def init(config: str, name: Optional[str], asgi: str, force: bool) -> None:
    """Write a starter spec."""
    from ..generate.starter import write_starter

    path = write_starter(config or SPEC_FILENAME, name or os.path.basename(os.getcwd()), asgi, force)
    click.echo(f"wrote {path}\nnext: supervisor-fastapi check && supervisor-fastapi up")


@main.command("render")
@config_option
@click.option("-o", "--output", metavar="PATH", default=None,
              help="Where to write the conf (default: supervisord.conf, or <app>-kubernetes.yaml, beside the spec; "
                   "- for stdout).")
@click.option("--fragment", is_flag=True,
              help="Write a conf.d fragment (programs only) for an OS-packaged supervisord.")
@click.option("--with-plugins", is_flag=True,
              help="With --fragment: also add the rpcinterface/ctlplugin sections (socket hold, "
                   "rolling_restart in supervisorctl); supervisord and supervisorctl then refuse to start "
                   "unless their Python can import supervisor_fastapi.")
@target_option
@user_errors
def render_cmd(config: Optional[str], output: Optional[str], fragment: bool, with_plugins: bool, target: str) -> None:
    """Render the spec into a supervisord conf (or Kubernetes manifests)."""
    spec = load_spec(config)
    if target == "kubernetes":
        if fragment or with_plugins:
            raise UserError("--fragment and --with-plugins are for --target supervisord")
        kube.render(spec, output, regenerate_command(config, output, target=target),
                    lambda text: click.echo(text, nl=False), lambda line: click.echo(line, err=True))
        return
    if target in ("nginx", "caddy"):
        from . import https

        if fragment or with_plugins:
            raise UserError("--fragment and --with-plugins are for --target supervisord")
        https.render_site(spec, target, output, regenerate_command(config, output, target=target),
                          lambda text: click.echo(text, nl=False), lambda line: click.echo(line, err=True))
        return
    hosting = spec.supervisord.hosting(fragment, with_plugins)
    command = _render_command(hosting, config, output, with_plugins)
    if output == "-":
        click.echo(render(spec, command, hosting), nl=False)
        return
    path = output or (str(spec.supervisord.fragment) if hosting.shared else deploy.default_conf_path(spec))
    deploy.render_to(spec, path, command, hosting)
    from . import https

    for written, _ in https.proxy_files(spec, command, hosting):
        click.echo(f"wrote {written}", err=True)  # [https]: the Caddyfile (or the OS Caddy's snippet)
    click.echo(f"wrote {path}", err=True)
    click.echo(_next_step(spec, hosting, path), err=True)


def _render_command(hosting: Hosting, config: Optional[str], output: Optional[str], with_plugins: bool) -> str:
    """The command the header of `render`'s conf names: in a shared supervisord `up` is what
    writes and applies the fragment; else `render` again, with the same flags."""
    if hosting.shared:
        return up_command(config)
    return regenerate_command(config, output, hosting.fragment) + (" --with-plugins" if with_plugins else "")


def _next_step(spec: Spec, hosting: Hosting, path: str) -> str:
    if not hosting.fragment:
        return f"run: supervisord -c {path}   (then: supervisorctl -c {path} status)"
    target = str(spec.supervisord.fragment) if hosting.shared else Names(spec.app.name).fragment
    copy = "" if os.path.abspath(path) == target else f"cp {path} {target} && "
    return f"install: {copy}supervisorctl reread && supervisorctl update" + \
        ("   (or: supervisor-fastapi up)" if hosting.shared else "")


@main.command()
@config_option
@target_option
@click.option("--fragment", is_flag=True, help="Check as a conf.d fragment for an OS-packaged supervisord.")
@click.option("--with-plugins", is_flag=True, help="With --fragment: that supervisord loads the plugins.")
@user_errors
def check(config: Optional[str], target: str, fragment: bool, with_plugins: bool) -> None:
    """Validate the spec, the generated conf, the bind address, memory capacity, the app's Python and its import."""
    spec = load_spec(config)
    hosting = spec.supervisord.hosting(fragment, with_plugins)
    if target == "kubernetes":
        results = checks.kubernetes_checks(spec)
    elif target in ("nginx", "caddy"):
        from . import https

        results = [checks.Result(True, "spec", spec.source)] + https.site_checks(spec, target)
    elif hosting.shared:
        from . import host

        serving, host_results = host.host_checks(spec)  # one round of questions to that supervisord
        results = checks.run_checks(spec, serving, checks.total_ram()) + host_results
    else:
        running = control.is_running(Layout(spec.run_dir))
        results = checks.run_checks(spec, running, checks.total_ram())
        results += checks.plugin_checks(hosting)
    if target == "supervisord" and spec.https is not None:
        from . import https

        results += https.check_results(spec, hosting)
    for r in results:
        mark = click.style("FAIL", fg="red") if not r.ok else \
            click.style("warn", fg="yellow") if r.warn else click.style("ok  ", fg="green")
        click.echo(f"{mark} {r.what}" + (f": {r.detail}" if r.detail else ""))
    if not all(r.ok for r in results):
        sys.exit(1)


@main.command()
@config_option
@click.option("-o", "--output", metavar="PATH", default=None, help="Conf path (default: beside the spec).")
@click.option("--timeout", default=60.0, show_default=True,
              help="Seconds to wait for the workers; with [migrate], migrate.timeout is added to it.")
@click.option("--over-capacity", is_flag=True,
              help="Start the workers although server.workers x memory.per_worker exceeds memory.budget "
                   "(`check` fails on it; without this flag `up` refuses).")
@user_errors
def up(config: Optional[str], output: Optional[str], timeout: float, over_capacity: bool) -> None:
    """Render, start supervisord (or apply changes to it) and wait until every worker accepts.

    With supervisord.serverurl: write the fragment and apply it in that supervisord instead."""
    spec = load_spec(config)
    s, hosting = spec.supervisord, spec.supervisord.hosting()
    if hosting.shared and output:
        raise UserError(f"{spec.source}: up writes the fragment at supervisord.fragment ({s.fragment}); "
                        "set that key instead of -o")
    conf = output or deploy.default_conf_path(spec)
    command = up_command(config) if hosting.shared else regenerate_command(config, output)
    try:
        ready = deploy.up(spec, conf, command, progress, timeout, over_capacity)
    except KeyboardInterrupt:
        # Ctrl-C stops the waiting, not what was started: say what is left and what to do.
        if hosting.shared:
            left = "this app's programs stay in that supervisord; `supervisor-fastapi down` removes them"
        elif control.is_running(Layout(spec.run_dir)):
            left = deploy.STILL_RUNNING
        else:
            left = "supervisord is not running"
        click.secho(f"interrupted: {left}", fg="red", err=True)
        sys.exit(130)
    click.echo(f"{spec.app.name}: {len(ready)} workers serving {deploy.url_of(spec)}")
    click.echo(f"supervisorctl -s {s.serverurl} status" if hosting.shared else f"supervisorctl -c {conf} status")


@main.command("deploy")
@click.argument("src", metavar="SRC")
@config_option
@click.option("-o", "--output", metavar="PATH", default=None, help="Conf path (default: beside the spec).")
@click.option("--id", "release_id", metavar="ID", default=None,
              help="The new release's id (default: the UTC time, 20261204164500).")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds each new worker may take to accept.")
@user_errors
def deploy_cmd(src: str, config: Optional[str], output: Optional[str], release_id: Optional[str],
               timeout: float) -> None:
    """Release mode: SRC (a folder or a .tar.gz) becomes a new release; it is built, imported and
    migrated, and only when its migration exits 0 does `current` switch and the workers roll onto it."""
    from . import releases

    spec = load_spec(config)
    conf = output or deploy.default_conf_path(spec)
    deploy.make_dirs(spec)
    with deploy.operation_lock(Layout(spec.run_dir), "deploy"):  # not while an up, down or rollback runs
        click.echo(releases.deploy_release(spec, conf, regenerate_command(config, output), src, progress,
                                           release_id, timeout))


@main.command("rollback")
@click.argument("release_id", metavar="[ID]", required=False)
@config_option
@click.option("-o", "--output", metavar="PATH", default=None, help="Conf path (default: beside the spec).")
@click.option("--migrate", is_flag=True, help="Run [migrate] from that release first (it never runs otherwise).")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds each new worker may take to accept.")
@user_errors
def rollback_cmd(release_id: Optional[str], config: Optional[str], output: Optional[str], migrate: bool,
                 timeout: float) -> None:
    """Release mode: switch `current` to the previous release (or ID) and roll the workers onto it."""
    from . import releases

    spec = load_spec(config)
    conf = output or deploy.default_conf_path(spec)
    deploy.make_dirs(spec)
    with deploy.operation_lock(Layout(spec.run_dir), "rollback"):
        click.echo(releases.rollback(spec, conf, regenerate_command(config, output), progress, release_id, migrate,
                                     timeout))


@main.command("releases")
@config_option
@user_errors
def releases_cmd(config: Optional[str]) -> None:
    """Release mode: each release's id, creation time, migration result; * marks the current one."""
    from . import releases

    click.echo(releases.format_releases(releases.list_releases(load_spec(config))))


@main.command()
@config_option
@user_errors
def down(config: Optional[str]) -> None:
    """Stop supervisord and every program of this deployment (with supervisord.serverurl: this
    app's programs in that supervisord, and its fragment)."""
    spec = load_spec(config)
    click.echo("stopped" if deploy.down(spec, progress) else "not running")


@main.command("systemd-unit")
@config_option
@click.option("-o", "--output", metavar="PATH", default=None, help="Conf path the unit starts.")
@user_errors
def systemd_unit(config: Optional[str], output: Optional[str]) -> None:
    """Print a systemd unit that starts supervisord at boot and restarts it if it dies."""
    spec = load_spec(config)
    if spec.supervisord.hosting().shared:
        raise UserError(f"{spec.source}: supervisord.serverurl is set: the supervisord there starts this app at "
                        "boot (Debian: the supervisor package's own unit, `systemctl enable supervisor`)")
    click.echo(systemd.unit(spec, os.path.abspath(output or deploy.default_conf_path(spec)), sys.executable),
               nl=False)


@main.command()
@click.option("--workers", default=2, show_default=True)
@click.option("--smoke", is_flag=True, help="Send a few requests, print which workers answered, stop, exit.")
@user_errors
def demo(workers: int, smoke: bool) -> None:
    """Serve a bundled demo app with N workers from a temporary folder; Ctrl-C stops it."""
    from .demo import run_demo

    run_demo(workers, smoke, progress)



@main.command("alert-test")
@config_option
@user_errors
def alert_test(config: Optional[str]) -> None:
    """Send a test alert to every [[alerts]] channel and report each result (exit 1 if any failed)."""
    from .alerttest import test_report

    lines, ok = test_report(load_spec(config))
    click.echo("\n".join(lines))
    if not ok:
        sys.exit(1)


def serverurl_option(f: F) -> F:
    return click.option("--serverurl", metavar="URL", default=None,
                        help="supervisord to talk to, e.g. unix:///var/run/supervisor.sock for a conf.d fragment "
                             "(default: supervisord.serverurl, else this deployment's own control socket; "
                             "credentials from SUPERVISOR_USERNAME/SUPERVISOR_PASSWORD).")(f)


@main.command("restart")
@config_option
@click.option("--timeout", default=60.0, show_default=True,
              help="Seconds each new worker may take to accept connections.")
@serverurl_option
@user_errors
def restart_cmd(config: Optional[str], timeout: float, serverurl: Optional[str]) -> None:
    """Rolling restart: replace the web workers one at a time, each new one listening before the next stops."""
    from . import roll

    spec = load_spec(config)
    result = roll.rolling_restart(_edges(spec, serverurl), Names(spec.app.name).web, progress, timeout)
    click.echo(f"{spec.app.name}: restarted {len(result.restarted)}"
               + (f", skipped {len(result.skipped)}" if result.skipped else "")
               + ("" if result.ok else f"; FAILED at {result.failed}: {result.reason}"))
    if not result.ok:
        sys.exit(1)


@main.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--watch", is_flag=True, help="Refresh in place every --interval seconds until Ctrl-C (exit 0).")
@click.option("--interval", type=click.FloatRange(min=0.5, max=3600), default=2.0, show_default=True,
              help="Seconds between frames with --watch.")
@click.option("--count", type=click.IntRange(min=0), default=0,
              help="With --watch: stop after this many frames (0: until Ctrl-C).")
@serverurl_option
@user_errors
def status_cmd(config: Optional[str], as_json: bool, watch: bool, interval: float, count: int,
               serverurl: Optional[str]) -> None:
    """Every program and worker: state, pid, uptime, RSS, restarts, incidents, last alert (exit 1 if down)."""
    from . import statusview

    spec = load_spec(config)
    edges = _edges(spec, serverurl)
    if watch:
        if as_json:
            raise UserError("status: --watch is for people; use --json without it (once per call) in scripts")
        sys.exit(_watch_status(spec, edges, interval, count))
    status = statusview.status_of(edges, spec.app.name, statusview.socket_holds(edges.proxy, spec.app.name),
                                  programs=[p.name for p in spec.programs])
    if as_json:
        click.echo(json.dumps(status.to_json(), indent=2, default=str))
    else:
        click.echo(statusview.format_status(status, time.time()))
    if not status.ok:
        sys.exit(1)


def _watch_status(spec: Spec, edges: Any, interval: float, count: int) -> int:
    from ..contracts.files import read_worker_metrics
    from ..runtime.reqcount import parse_counts
    from . import statusview, watch

    layout = Layout(spec.run_dir)

    def frame() -> "watch.Frame":
        status = statusview.status_of(edges, spec.app.name, statusview.socket_holds(edges.proxy, spec.app.name),
                                      programs=[p.name for p in spec.programs])
        totals = None
        if spec.metrics is not None:  # the workers count requests into run_dir/workers/<name>.metrics
            names = [str(i["name"]) for i in edges.infos() if i["group"] == Names(spec.app.name).web]
            parsed = {n: parse_counts(d) for n, d in read_worker_metrics(layout.state_dir, names).items()}
            totals = {n: float(sum(p[0].values())) for n, p in parsed.items() if p is not None}
        return statusview.format_status(status, time.time()), totals

    return watch.watch(frame, lambda text: click.echo(text, nl=False), interval, count, tty=sys.stdout.isatty(),
                       errors=(OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError))


def _edges(spec: Spec, serverurl: Optional[str]) -> Any:
    from . import edges

    layout = Layout(spec.run_dir)
    if serverurl is None and spec.supervisord.hosting().shared:
        from . import host

        host.connect(spec)  # answers, or one line with the fix
        serverurl = spec.supervisord.serverurl
    if serverurl is None and not control.is_running(layout):
        raise UserError(f"supervisord is not running for {spec.app.name} ({layout.socket}); "
                        "start it with `supervisor-fastapi up`, or set supervisord.serverurl (or pass "
                        "--serverurl) for a conf.d fragment")
    return edges.local_edges(layout, spec.app.name, serverurl, control.rpc_timeout(spec))
