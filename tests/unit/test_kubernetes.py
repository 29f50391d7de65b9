"""generate/kubernetes.py: the mapping from spec to manifests, and strict schema validation of
every manifest rendered from conf/ and from generated specs (kubernetes-validate)."""

import dataclasses
import functools
import json
import os
import socket
import subprocess
import sys
import threading

import kubernetes_validate
import pytest
import yaml as pyyaml
from click.testing import CliRunner
from hypothesis import assume, event, given
from hypothesis import strategies as st
from uvicorn.main import main as uvicorn_main

from supervisor_fastapi.cli.main import main
from supervisor_fastapi.errors import SpecError, UserError
from supervisor_fastapi.generate import kubernetes as k8s
from supervisor_fastapi.spec import Kubernetes, parse_spec

from ._core_helpers import HOST, data, spec_of
from .test_conf_examples import CONF, DEPLOYED, NO_HOST
from .test_fuzz import FUZZ, assert_clear_error, specs, to_toml

# The oldest Kubernetes these manifests support (policy/v1 PDBs, startup probes and
# seccompProfile fields are all older) and the newest schema kubernetes-validate ships.
K8S_VERSIONS = ["1.25.0", kubernetes_validate.latest_version()]
IMAGE = "registry.example.com/app:1.0"


def kspec(**tables):
    tables["kubernetes"] = {"image": IMAGE, **tables.get("kubernetes", {})}
    return spec_of(data(**tables))


def by_kind(spec):
    out = {}
    for doc in k8s.manifests(spec):
        out.setdefault(doc["kind"], []).append(doc)
    return out


def web(spec):
    return by_kind(spec)["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]


@pytest.fixture(autouse=True, scope="module")
def cached_schemas():
    # kubernetes_validate reads its 1.8 MB definitions file on every call; memoizing the
    # read (nothing else) makes the generated-spec test five times faster.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kubernetes_validate.utils, "schema_contents",
                   functools.lru_cache(maxsize=None)(kubernetes_validate.utils.schema_contents))
        yield


# Manifests already validated, as (canonical JSON, version): generated specs render the same
# Service, PDB or Job again and again, and a schema check costs ~20 ms.
VALIDATED = set()


def assert_valid(docs):
    for doc in docs:
        for version in K8S_VERSIONS:
            key = (json.dumps(doc, sort_keys=True), version)
            if key in VALIDATED:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:  # its str() carries the whole schema
                where = "/".join(str(p) for p in exc.caught.absolute_path)
                pytest.fail(f"{doc['kind']} {doc['metadata']['name']} invalid for {version} at {where}: "
                            f"{exc.caught.message}")
            VALIDATED.add(key)


# --- every manifest validates strictly ------------------------------------------------------


def example_spec(example):
    with open(os.path.join(CONF, f"{example}.toml"), encoding="utf-8") as f:
        text = f.read()
    source = DEPLOYED[example]
    spec = parse_spec(text, source, os.path.dirname(source), NO_HOST,
                      "supervisor-fastapi" if source.endswith("pyproject.toml") else None)
    if spec.kubernetes.image is None:  # only production.toml has a [kubernetes] table
        spec = dataclasses.replace(spec, kubernetes=Kubernetes(image=IMAGE))
    return spec


@pytest.mark.parametrize("example", sorted(DEPLOYED))
def test_conf_examples_render_valid_manifests(example):
    spec = example_spec(example)
    docs = k8s.manifests(spec)
    assert_valid(docs)
    assert list(pyyaml.safe_load_all(k8s.render(spec, "render", "x.yaml"))) == docs


def test_production_renders_every_kind():
    spec = example_spec("production")
    assert [(d["kind"], d["metadata"]["name"]) for d in k8s.manifests(spec)] == [
        ("Job", k8s.migration_job_name(spec)), ("Deployment", "shop"), ("Service", "shop"),
        ("PodDisruptionBudget", "shop"), ("Deployment", "shop-worker")]


images = st.sampled_from([IMAGE, "app", "r.io/a/b@sha256:" + "a" * 64])
kube_tables = st.fixed_dictionaries({"image": images}, optional={
    "replicas": st.integers(0, 5), "namespace": st.sampled_from(["shop", "a-1"]),
    "service_type": st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]),
    "port": st.integers(1024, 65535), "service_port": st.integers(1, 65535),
    "python": st.sampled_from(["python", "/srv/venv/bin/python"]), "directory": st.sampled_from(["/app", "/srv/é"]),
    "secret": st.sampled_from(["s", "a.b-c"]), "run_as_user": st.integers(1, 2**31 - 1),
    "health_path": st.sampled_from(["/", "/healthz?x=1", "/%41"]), "prestop_delay": st.integers(0, 30)})


@st.composite
def kube_specs(draw):
    d = draw(specs(bad=0))  # the test renders accepted specs: no draws wasted on deliberate refusals
    d["kubernetes"] = draw(kube_tables)
    names = [n for t in [d["app"].get("env")] + [p.get("env") for p in d.get("programs", []) if isinstance(p, dict)]
             if isinstance(t, dict) for n in t]
    if names and draw(st.booleans()):
        secret = draw(st.lists(st.sampled_from(names), max_size=2))
        d["kubernetes"]["secret_env"] = secret
        # Unique values, so finding one anywhere in the output is a leak.
        for i, table in enumerate([d["app"].get("env")] + [p.get("env") for p in d.get("programs", [])
                                                           if isinstance(p, dict)]):
            for name in secret:
                if isinstance(table, dict) and name in table:
                    table[name] = f"zz-secret-{i}-{name}-zz"
    return d


@FUZZ
@given(kube_specs())
def test_generated_specs_render_valid_manifests(d):
    try:
        spec = parse_spec(to_toml(d), "/srv/fuzz/supervisor-fastapi.toml", "/srv/fuzz", HOST)
    except UserError:
        assume(False)  # the loader's refusals are test_fuzz's subject; here: specs it accepts
    try:
        docs = k8s.manifests(spec)
    except UserError as exc:
        assert_clear_error(exc)
        event("refused")
        return
    event("rendered")
    assert_valid(docs)
    text = k8s.render(spec, "render", "x.yaml")
    assert list(pyyaml.safe_load_all(text)) == docs
    assert_no_secret_values(spec, text)


def assert_no_secret_values(spec, text):
    assert "zz-secret-" not in text
    secret = k8s.secret_env_names(spec)
    for doc in k8s.manifests(spec):
        for c in doc["spec"].get("template", {}).get("spec", {}).get("containers", []):
            for e in c.get("env", []):
                assert (e["name"] in secret) == ("valueFrom" in e) or e["name"].startswith("UVICORN_"), e


# --- the mapping ----------------------------------------------------------------------------


def test_startup_probe_covers_startup_timeout_with_a_generous_default():
    default = web(kspec())["startupProbe"]
    assert default["periodSeconds"] * default["failureThreshold"] >= k8s.DEFAULT_STARTUP_TIMEOUT >= 300
    probe = web(kspec(server={"startup_timeout": 121}))["startupProbe"]
    assert probe["tcpSocket"] == {"port": "http"}
    assert 121 <= probe["periodSeconds"] * probe["failureThreshold"] < 121 + probe["periodSeconds"]


def test_liveness_only_with_heartbeat_timeout_and_about_that_long():
    assert "livenessProbe" not in web(kspec())
    probe = web(kspec(server={"heartbeat_timeout": 30}))["livenessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] == 30
    assert probe["timeoutSeconds"] > probe["periodSeconds"] - 1 and "exec" in probe


def test_health_path_and_tls_make_http_probes():
    c = web(kspec(server={"heartbeat_timeout": 9, "uvicorn": {"ssl_certfile": "/tls/crt", "ssl_keyfile": "/tls/key"}},
                  kubernetes={"health_path": "/healthz"}))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTPS"}, probe


def _serve(answer):
    """A loopback server that answers each connection with ``answer`` (or holds it, if None)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(10)
    held = []

    def loop():
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        conn.recv(4096)
        if answer is None:
            held.append(conn)  # a blocked event loop: connected, never answered
        else:
            conn.sendall(answer)
            conn.close()

    threading.Thread(target=loop, daemon=True).start()
    return srv, held


@pytest.mark.parametrize("answer,ok", [(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", True), (None, False)])
def test_exec_liveness_probe_needs_an_http_answer(answer, ok):
    srv, held = _serve(answer)
    try:
        port = srv.getsockname()[1]
        if port < 1024:
            pytest.skip("ephemeral port below 1024")
        spec = kspec(server={"heartbeat_timeout": 3}, kubernetes={"port": port, "python": sys.executable})
        probe = web(spec)["livenessProbe"]
        proc = subprocess.run(probe["exec"]["command"], capture_output=True, timeout=probe["timeoutSeconds"] + 5)
        assert (proc.returncode == 0) is ok, proc.stderr
    finally:
        srv.close()
        for conn in held:
            conn.close()


def test_resources_from_memory():
    c = web(kspec(memory={"per_worker": "600MB", "limit": "1GB"}))
    assert c["resources"] == {"requests": {"memory": "600Mi"}, "limits": {"memory": "1Gi"}}
    assert "resources" not in web(kspec())
    assert k8s.quantity(1000) == "1000" and k8s.quantity(1536 * 1024) == "1536Ki"
    with pytest.raises(SpecError, match="memory.per_worker: is above memory.limit"):
        k8s.manifests(kspec(memory={"per_worker": "2GB", "limit": "1GB"}))


def test_grace_period_covers_prestop_and_drain():
    spec = kspec(server={"graceful_timeout": 30.5}, kubernetes={"prestop_delay": 7})
    pod = by_kind(spec)["Deployment"][0]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 7 + 30.5
    assert pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1] == "import time; time.sleep(7)"
    assert "--timeout-graceful-shutdown" in pod["containers"][0]["command"]
    assert "lifecycle" not in web(kspec(kubernetes={"prestop_delay": 0}))


def test_rollout_never_drops_capacity_and_pods_run_as_non_root():
    d = by_kind(kspec(server={"startsecs": 3}))["Deployment"][0]["spec"]
    assert d["strategy"]["rollingUpdate"]["maxUnavailable"] == 0 and d["minReadySeconds"] == 3
    pod = d["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_job_name_is_stable_per_release_and_changes_with_image_or_command():
    one = kspec(migrate={"command": "alembic upgrade head"})
    name = k8s.migration_job_name(one)
    same = kspec(migrate={"command": "alembic upgrade head"}, kubernetes={"replicas": 7})
    assert name == k8s.migration_job_name(same)
    assert name != k8s.migration_job_name(kspec(migrate={"command": "alembic upgrade head"},
                                                kubernetes={"image": "registry.example.com/app:1.1"}))
    assert name != k8s.migration_job_name(kspec(migrate={"command": "alembic upgrade heads"}))
    assert name.startswith("web-migrate-") and len(name) == len("web-migrate-") + 10
    job = by_kind(one)["Job"][0]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["alembic", "upgrade", "head"]
    assert k8s.migration_job_name(kspec()) is None and "Job" not in by_kind(kspec())


def test_kubectl_steps_wait_for_the_job_before_the_deployment():
    spec = kspec(migrate={"command": "m", "timeout": 100}, kubernetes={"namespace": "shop"})
    steps = k8s.kubectl_steps(spec, "my file.yaml")
    assert steps == ["kubectl apply -f 'my file.yaml' -l app.kubernetes.io/component=migrate",
                     f"kubectl wait -n shop --for=condition=complete --timeout=130s job/{k8s.migration_job_name(spec)}",
                     "kubectl apply -f 'my file.yaml'"]
    assert k8s.kubectl_steps(kspec(), "x.yaml") == ["kubectl apply -f x.yaml"]


def test_secrets_never_in_the_output():
    spec = kspec(app={"env": {"DATABASE_URL": "postgresql://u@db/x-VALUE1", "API_TOKEN": "VALUE2-tok",
                              "CACHE": "redis://u:VALUE3@cache", "PLAIN": "shown"}},
                 migrate={"command": "m", "env": {"MIGRATE_PASSWORD": "VALUE4"}},
                 programs=[{"name": "w", "command": "w", "env": {"W_SECRET": "VALUE5"}}],
                 server={"uvicorn": {"ssl_keyfile_password_env": "TLS_PW"}},
                 kubernetes={"secret_env": ["DATABASE_URL"], "secret": "app-secrets"})
    text = k8s.render(spec, "render", "x.yaml")
    for n in range(1, 6):
        assert f"VALUE{n}" not in text
    assert "shown" in text
    assert k8s.secret_env_names(spec) == {"DATABASE_URL", "API_TOKEN", "CACHE", "MIGRATE_PASSWORD", "W_SECRET"}
    env = {e["name"]: e for e in web(spec)["env"]}
    assert env["DATABASE_URL"]["valueFrom"] == {"secretKeyRef": {"name": "app-secrets", "key": "DATABASE_URL"}}
    assert env["UVICORN_SSL_KEYFILE_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": "app-secrets",
                                                                                 "key": "TLS_PW"}}
    create = k8s.kubectl_steps(spec, "x.yaml")[0]
    assert create.startswith("kubectl create secret generic app-secrets ")
    assert '--from-literal=TLS_PW="$TLS_PW"' in create


def test_every_uvicorn_setting_reaches_uvicorns_own_cli():
    f = __file__  # uvicorn checks that some of these files exist
    values = {"loop": "asyncio", "http": "h11", "ws": "wsproto", "ws_max_size": 5, "ws_max_queue": 6,
              "ws_ping_interval": 2.5, "ws_ping_timeout": 3, "ws_per_message_deflate": False, "lifespan": "on",
              "log_level": "debug", "log_config": f, "access_log": False, "use_colors": True,
              "proxy_headers": False, "server_header": False, "date_header": False,
              "forwarded_allow_ips": ["10.0.0.1", "*"], "root_path": "/api", "limit_concurrency": 9,
              "limit_max_requests": 10, "timeout_keep_alive": 11, "ssl_keyfile": f, "ssl_certfile": f,
              "ssl_ca_certs": f, "ssl_ciphers": "TLSv1", "ssl_keyfile_password_env": "PW", "ssl_cert_reqs": 2,
              "headers": ["X-A: b", "X-B:c"], "h11_max_incomplete_event_size": 99,
              "http2": True, "interface": "asgi3", "limit_max_requests_jitter": 3, "ssl_version": 2,
              "reset_contextvars": True}
    from supervisor_fastapi.uvicorn_settings import UVICORN_SETTINGS
    values = {k: v for k, v in values.items() if k in UVICORN_SETTINGS}  # an older uvicorn has fewer
    assert set(values) == set(UVICORN_SETTINGS)
    spec = kspec(app={"asgi": "main:make()"}, server={"uvicorn": values, "backlog": 77, "graceful_timeout": 4})
    argv = web(spec)["command"]
    assert argv[:3] == ["python", "-m", "uvicorn"]
    params = uvicorn_main.make_context("uvicorn", argv[3:]).params
    expected = {**values, "forwarded_allow_ips": "10.0.0.1,*", "headers": [("X-A", "b"), ("X-B", "c")],
                "ws_ping_timeout": 3.0}
    del expected["ssl_keyfile_password_env"]  # from the environment, below
    got = {key: params[key] for key in expected}
    got["headers"] = header_pairs(got["headers"])
    assert got == expected
    assert params["app"] == "main:make" and params["factory"] is True and params["port"] == 8000
    assert params["host"] == "0.0.0.0" and params["backlog"] == 77 and params["timeout_graceful_shutdown"] == 4
    ctx = uvicorn_main.make_context("uvicorn", argv[3:], auto_envvar_prefix="UVICORN")
    assert ctx.params["ssl_keyfile_password"] is None  # not on the command line
    assert "UVICORN_SSL_KEYFILE_PASSWORD" in {e["name"] for e in web(spec)["env"]}


def header_pairs(headers):
    """uvicorn's --header as (name, value) pairs: releases before 0.55 keep 'Name:Value'
    strings for run() to split, 0.55 splits them in the option's callback."""
    return [tuple(p.strip() for p in h.split(":", 1)) if isinstance(h, str) else tuple(h) for h in headers]


def test_programs_are_deployments():
    spec = kspec(programs=[{"name": "celery_beat", "command": "celery beat", "numprocs": 3, "env": {"A": "1"}},
                           {"name": "idle", "command": "x", "autostart": False}])
    deps = by_kind(spec)["Deployment"]
    assert [d["metadata"]["name"] for d in deps] == ["web", "web-celery-beat", "web-idle"]
    assert deps[1]["spec"]["replicas"] == 3 and deps[2]["spec"]["replicas"] == 0
    c = deps[1]["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["celery", "beat"] and {"name": "A", "value": "1"} in c["env"]


@pytest.mark.parametrize("tables,match", [
    ({"app": {"name": "shop"}, "programs": [{"name": "web", "command": "x"}]},
     "programs[0].name: 'web' is the component name"),
    ({"programs": [{"name": "a_b", "command": "x"}, {"name": "a-b", "command": "x"}]}, "programs[1].name"),
    ({"app": {"name": "shop-"}}, "app.name: 'shop-' is not a Kubernetes name"),
    ({"programs": [{"name": "p" * 60, "command": "x"}]}, "programs[0].name"),
])
def test_names_the_cluster_would_refuse_are_spec_errors(tables, match):
    with pytest.raises(SpecError) as info:
        k8s.manifests(kspec(**tables))
    assert match in str(info.value)


def test_image_is_required_for_this_target_only():
    spec = spec_of(data())
    with pytest.raises(SpecError, match="kubernetes.image: is required for --target kubernetes"):
        k8s.manifests(spec)


def test_ignored_keys_are_named():
    ignored = dict(k8s.ignored_keys(example_spec("production")))
    assert {"[crash_loop]", "[[alerts]]", "[supervisord]", "server.socket_mode", "server.workers",
            "app.user"} <= set(ignored)
    assert k8s.ignored_keys(kspec()) == []


# --- the CLI --------------------------------------------------------------------------------


def runner():
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2 mixes stderr into stdout unless told
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps them apart and has no such argument


def write_spec(tmp_path, extra=""):
    path = tmp_path / "supervisor-fastapi.toml"
    path.write_text('[app]\nname = "shop"\nasgi = "main:app"\n[migrate]\ncommand = "alembic upgrade head"\n' + extra)
    return str(path)


def test_cli_render_to_stdout_and_to_a_file(tmp_path):
    path = write_spec(tmp_path, f'[kubernetes]\nimage = "{IMAGE}"\n')
    result = runner().invoke(main, ["render", "--target", "kubernetes", "-c", path, "-o", "-"])
    assert result.exit_code == 0, result.output
    docs = list(pyyaml.safe_load_all(result.stdout))
    assert [d["kind"] for d in docs] == ["Job", "Deployment", "Service", "PodDisruptionBudget"]
    assert "kubectl wait" in result.stderr and "kubectl apply -f shop-kubernetes.yaml" in result.stderr
    result = runner().invoke(main, ["render", "--target", "kubernetes", "-c", path])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "shop-kubernetes.yaml").read_text().count("\n---\n") == 4  # after the header, then between
    assert not (tmp_path / "supervisord.conf").exists()


def test_cli_refuses_without_image_and_with_fragment(tmp_path):
    path = write_spec(tmp_path)
    result = runner().invoke(main, ["render", "--target", "kubernetes", "-c", path, "-o", "-"])
    assert result.exit_code == 2 and "kubernetes.image: is required" in result.stderr
    assert "Traceback" not in result.output
    result = runner().invoke(main, ["render", "--target", "kubernetes", "--fragment", "-c", path, "-o", "-"])
    assert result.exit_code == 2 and "--fragment" in result.stderr


def test_cli_check_target_kubernetes(tmp_path):
    path = write_spec(tmp_path, '[server]\nsocket_mode = "0660"\nbind = "unix:///tmp/x.sock"\n')
    result = runner().invoke(main, ["check", "--target", "kubernetes", "-c", path])
    assert result.exit_code == 1 and "FAIL kubernetes.image" in result.stdout
    path = write_spec(tmp_path, f'[server]\nsocket_mode = "0660"\nbind = "unix:///tmp/x.sock"\n'
                                f'[kubernetes]\nimage = "{IMAGE}"\n[crash_loop]\nrestarts = 2\n')
    result = runner().invoke(main, ["check", "--target", "kubernetes", "-c", path])
    assert result.exit_code == 0, result.output
    assert "ignored: server.bind" in result.stdout and "ignored: server.socket_mode" in result.stdout
    assert "ignored: [crash_loop]" in result.stdout and "CrashLoopBackOff" in result.stdout


def test_docs_show_the_real_rendering_of_production():
    doc_path = os.path.join(os.path.dirname(CONF), "docs", "kubernetes.md")
    with open(doc_path, encoding="utf-8") as f:
        doc = f.read()
    spec = parse_spec(open(os.path.join(CONF, "production.toml"), encoding="utf-8").read(),
                      os.path.join(CONF, "production.toml"), CONF, NO_HOST)
    text = k8s.render(spec, "supervisor-fastapi render --target kubernetes -c conf/production.toml -o -",
                      "shop-kubernetes.yaml")
    body = text.split("\n", 1)[1]  # the first line names the spec's absolute path
    assert body in doc, "docs/kubernetes.md is stale: paste the output of the render command it shows"

