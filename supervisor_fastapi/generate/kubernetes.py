"""Spec -> Kubernetes manifests: a pure, deterministic function, like ``conf.build``.

``manifests`` turns a Spec into a list of manifest dicts; ``render`` writes them as one
multi-document YAML stream through ``generate.yaml`` (all YAML quoting lives there).
The same keys the supervisord target reads map onto what the cluster does itself:

- one uvicorn process per container (``python -m uvicorn`` with every ``server.uvicorn``
  setting), ``kubernetes.replicas`` pods instead of ``server.workers`` processes;
- the kubelet's probes instead of the watchdog: startup from ``server.startup_timeout``,
  liveness from ``server.heartbeat_timeout``, readiness always;
- memory request/limit from ``memory.per_worker``/``memory.limit`` (the cgroup limit
  replaces the RSS watchdog);
- a pre-stop delay, then SIGTERM and ``graceful_timeout``: the pod leaves the Service's
  endpoints before uvicorn stops accepting;
- the migration as a Job named from the image and the command, applied and waited for
  before the Deployment (``kubectl_steps``), instead of the migration gate.

Nothing here touches the disk or the cluster.
"""

import hashlib
import math
import re
import shlex
from fnmatch import fnmatch
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

from .. import __version__
from ..errors import SpecError
from ..spec import Program, Spec
from ..uvicorn_settings import UVICORN_SETTINGS, cli_env_name, cli_words
from . import yaml
from .conf import STOP_MARGIN

Manifest = Dict[str, Any]

MANAGED_BY = "supervisor-fastapi"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
WEB = "web"
MIGRATE = "migrate"
PORT_NAME = "http"
# When server.startup_timeout is unset: long enough for a slow import plus a lifespan
# start-up that waits for a database, since a startup probe that gives up kills the pod.
DEFAULT_STARTUP_TIMEOUT = 300
STARTUP_PERIOD = 2
READINESS_PERIOD = 5
# Extra seconds `kubectl wait` gives the Job beyond migrate.timeout (activeDeadlineSeconds
# counts from the Job's start, so scheduling and the image pull are already inside it).
WAIT_MARGIN = 30
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
# app.env names that hold credentials by their name, and URLs with a password in them:
# these come from the Secret even when kubernetes.secret_env does not list them.
_CREDENTIAL_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL",
                              re.IGNORECASE)
_URL_WITH_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:[^/@\s]+@")


# --- names ------------------------------------------------------------------------------


def _dns(spec: Spec, key: str, name: str, limit: int = 63) -> str:
    """A spec name as a Kubernetes name ('_' becomes '-'), refused when the cluster would refuse it."""
    out = name.replace("_", "-")
    if len(out) > limit or not _DNS_LABEL.match(out):
        raise SpecError(spec.source, key, f"{out!r} is not a Kubernetes name (at most {limit} lowercase letters, "
                        "digits and '-', starting and ending with a letter or digit)",
                        "rename it for --target kubernetes")
    return out


def base_name(spec: Spec) -> str:
    """The Deployment and Service name of the web app."""
    return _dns(spec, "app.name", spec.app.name)


def secret_name(spec: Spec) -> str:
    return spec.kubernetes.secret or f"{base_name(spec)}-env"


def program_name(spec: Spec, index: int, p: Program) -> str:
    key = f"programs[{index}].name"
    component = _dns(spec, key, p.name)
    if component in (WEB, MIGRATE):
        raise SpecError(spec.source, key, f"{p.name!r} is the component name of the app's own "
                        f"{'Deployment' if component == WEB else 'migration Job'} on Kubernetes",
                        "rename the program")
    return _dns(spec, key, f"{base_name(spec)}-{component}")


def migration_job_name(spec: Spec) -> Optional[str]:
    """``<app>-migrate-<hash>``: the hash of image and command, so each release's migration is its own Job.

    Re-applying the same release finds the Job already complete and runs nothing; a new
    image (or command) is a new name, so a new Job.
    """
    if spec.migrate is None:
        return None
    digest = hashlib.sha256(f"{_image(spec)}\n{spec.migrate.command}".encode()).hexdigest()[:10]
    return f"{base_name(spec)}-{MIGRATE}-{digest}"


def _image(spec: Spec) -> str:
    if not spec.kubernetes.image:
        raise SpecError(spec.source, "kubernetes.image", "is required for --target kubernetes",
                        'add image = "registry.example.com/app:1.0" to [kubernetes]')
    return spec.kubernetes.image


# --- secrets ----------------------------------------------------------------------------


def _env_tables(spec: Spec) -> List[Tuple[Tuple[str, str], ...]]:
    return [spec.app.env, spec.migrate.env if spec.migrate else ()] + [p.env for p in spec.programs]


def looks_like_credential(name: str, value: str) -> bool:
    """An env entry whose name says credential, or a URL carrying a password."""
    return bool(_CREDENTIAL_NAME.search(name) or _URL_WITH_PASSWORD.match(value))


def secret_env_names(spec: Spec) -> FrozenSet[str]:
    """Every env name taken from the Secret: kubernetes.secret_env plus those that look like credentials."""
    detected = {n for table in _env_tables(spec) for n, v in table if looks_like_credential(n, v)}
    return frozenset(spec.kubernetes.secret_env) | frozenset(detected)


def _env(spec: Spec, extra: Tuple[Tuple[str, str], ...]) -> List[Manifest]:
    merged = dict(spec.app.env)
    merged.update(extra)
    secret = secret_env_names(spec)
    out: List[Manifest] = []
    for name in sorted(merged):
        if name in secret:
            # The value in the spec is the VM's; on the cluster only the Secret's key is named.
            out.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret_name(spec), "key": name}}})
        else:
            out.append({"name": name, "value": merged[name]})
    return out


# --- the web container ------------------------------------------------------------------


def uvicorn_argv(spec: Spec) -> List[str]:
    """The container's command: uvicorn's own CLI with the spec's settings, one process."""
    s, k = spec.server, spec.kubernetes
    argv = [k.python, "-m", "uvicorn", spec.app.asgi]
    if spec.app.factory:
        argv.append("--factory")
    # uvicorn's CLI takes whole seconds here; rounding up never cuts a drain short.
    argv += ["--host", "0.0.0.0", "--port", str(k.port), "--backlog", str(s.backlog),
             "--timeout-graceful-shutdown", str(math.ceil(s.graceful_timeout))]
    for key, value in s.uvicorn:
        argv += cli_words(key, value)
    return argv


def _uvicorn_env(spec: Spec) -> List[Manifest]:
    """``*_env`` settings: uvicorn's CLI reads UVICORN_<NAME>, set from the Secret key the setting names."""
    return [{"name": cli_env_name(key), "valueFrom": {"secretKeyRef": {"name": secret_name(spec), "key": value}}}
            for key, value in spec.server.uvicorn if UVICORN_SETTINGS[key].kind == "env"]


def _tls(spec: Spec) -> bool:
    return bool(dict(spec.server.uvicorn).get("ssl_certfile"))


def _http_get(spec: Spec, path: str) -> Manifest:
    return {"httpGet": {"path": path, "port": PORT_NAME, "scheme": "HTTPS" if _tls(spec) else "HTTP"}}


def _listening(spec: Spec) -> Manifest:
    # uvicorn opens its socket only after the lifespan start-up has finished, so an accepted
    # connection means started; a health path, when the app has one, says more.
    if spec.kubernetes.health_path:
        return _http_get(spec, spec.kubernetes.health_path)
    return {"tcpSocket": {"port": PORT_NAME}}


def startup_probe(spec: Spec) -> Manifest:
    timeout = spec.server.startup_timeout or DEFAULT_STARTUP_TIMEOUT
    return {**_listening(spec), "periodSeconds": STARTUP_PERIOD, "timeoutSeconds": STARTUP_PERIOD,
            "failureThreshold": max(1, math.ceil(timeout / STARTUP_PERIOD))}


def readiness_probe(spec: Spec) -> Manifest:
    return {**_listening(spec), "periodSeconds": READINESS_PERIOD, "timeoutSeconds": 2, "failureThreshold": 2}


def liveness_probe(spec: Spec) -> Optional[Manifest]:
    """From server.heartbeat_timeout: three missed answers in a row, about that long, restart the container.

    A connect alone succeeds while the event loop is blocked (the kernel accepts), so the
    probe needs an HTTP answer: the health path's, or with none any status from the app.
    """
    beat = spec.server.heartbeat_timeout
    if not beat:
        return None
    period = max(1, math.ceil(beat / 3))
    if spec.kubernetes.health_path:
        handler = _http_get(spec, spec.kubernetes.health_path)
    else:
        port = spec.kubernetes.port
        conn = (f"http.client.HTTPSConnection('127.0.0.1', {port}, timeout={period}, "
                "context=ssl._create_unverified_context())" if _tls(spec)
                else f"http.client.HTTPConnection('127.0.0.1', {port}, timeout={period})")
        imports = "http.client, ssl" if _tls(spec) else "http.client"
        code = f"import {imports}; c = {conn}; c.request('GET', '/'); c.getresponse()"
        handler = {"exec": {"command": [spec.kubernetes.python, "-c", code]}}
    # The kubelet's own timeout a second above the probe's, so the probe reports first.
    return {**handler, "periodSeconds": period, "timeoutSeconds": period + 1, "failureThreshold": 3}


def grace_period(spec: Spec) -> int:
    """terminationGracePeriodSeconds: the pre-stop delay, the drain, and the margin supervisord also gives."""
    return spec.kubernetes.prestop_delay + math.ceil(spec.server.graceful_timeout) + STOP_MARGIN


def quantity(n: int) -> str:
    """Bytes as a Kubernetes quantity: '600Mi', '1Gi', or the byte count."""
    for suffix, scale in (("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)


def resources(spec: Spec) -> Manifest:
    m = spec.memory
    if m.per_worker and m.limit and m.per_worker > m.limit:
        raise SpecError(spec.source, "memory.per_worker", "is above memory.limit",
                        "Kubernetes refuses a memory request above the limit; lower per_worker or raise limit")
    out: Manifest = {}
    if m.per_worker:
        out["requests"] = {"memory": quantity(m.per_worker)}
    if m.limit:
        out["limits"] = {"memory": quantity(m.limit)}
    return out


def _container(spec: Spec, name: str, command: List[str], env: List[Manifest],
               directory: Optional[str]) -> Manifest:
    c: Manifest = {"name": name, "image": _image(spec), "command": command}
    if directory:
        c["workingDir"] = directory
    if env:
        c["env"] = env
    # The restricted Pod Security Standard: no privilege escalation, no capabilities.
    c["securityContext"] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return c


def _pod(spec: Spec, labels: Dict[str, str], containers: List[Manifest], **extra: Any) -> Manifest:
    uid = spec.kubernetes.run_as_user
    return {
        "metadata": {"labels": labels},
        "spec": {
            **extra,
            # Service links would put <SERVICE>_PORT=tcp://... variables into the app's
            # environment, which clash with settings like SHOP_PORT.
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": containers,
        },
    }


def _metadata(spec: Spec, name: str, labels: Dict[str, str]) -> Manifest:
    out: Manifest = {"name": name}
    if spec.kubernetes.namespace:
        out["namespace"] = spec.kubernetes.namespace
    out["labels"] = {**labels, LABEL_MANAGED_BY: MANAGED_BY}
    return out


def _labels(spec: Spec, component: str) -> Dict[str, str]:
    return {LABEL_NAME: base_name(spec), LABEL_COMPONENT: component}


# --- the manifests ----------------------------------------------------------------------


def web_deployment(spec: Spec) -> Manifest:
    k = spec.kubernetes
    labels = _labels(spec, WEB)
    c = _container(spec, WEB, uvicorn_argv(spec), _env(spec, ()) + _uvicorn_env(spec), k.directory)
    c["ports"] = [{"name": PORT_NAME, "containerPort": k.port, "protocol": "TCP"}]
    res = resources(spec)
    if res:
        c["resources"] = res
    c["startupProbe"] = startup_probe(spec)
    c["readinessProbe"] = readiness_probe(spec)
    live = liveness_probe(spec)
    if live:
        c["livenessProbe"] = live
    if k.prestop_delay:
        # The pod leaves the Service's endpoints while this runs; traffic routed before that
        # still arrives and is served. python is in the image; `sleep` may not be.
        c["lifecycle"] = {"preStop": {"exec": {"command": [
            k.python, "-c", f"import time; time.sleep({k.prestop_delay})"]}}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec, base_name(spec), labels),
        "spec": {
            "replicas": k.replicas,
            "selector": {"matchLabels": labels},
            # A new pod must be ready before an old one goes: capacity never drops in a rollout.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "minReadySeconds": spec.server.startsecs,
            "template": _pod(spec, labels, [c], terminationGracePeriodSeconds=grace_period(spec)),
        },
    }


def service(spec: Spec) -> Manifest:
    k = spec.kubernetes
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, base_name(spec), _labels(spec, WEB)),
        "spec": {
            "type": k.service_type,
            "selector": _labels(spec, WEB),
            "ports": [{"name": PORT_NAME, "port": k.service_port, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def disruption_budget(spec: Spec) -> Manifest:
    # maxUnavailable, not minAvailable: a drain may always evict one pod at a time, so a
    # one-replica app can still be moved off a node.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(spec, base_name(spec), _labels(spec, WEB)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels(spec, WEB)}},
    }


def migration_job(spec: Spec) -> Optional[Manifest]:
    m, name = spec.migrate, migration_job_name(spec)
    if m is None or name is None:
        return None
    labels = _labels(spec, MIGRATE)
    c = _container(spec, MIGRATE, shlex.split(m.command), _env(spec, m.env), spec.kubernetes.directory)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(spec, name, labels),
        "spec": {
            # As on the VM, a failed migration is not retried: the release stops there.
            "backoffLimit": 0,
            "activeDeadlineSeconds": math.ceil(m.timeout),
            "template": _pod(spec, labels, [c], restartPolicy="Never"),
        },
    }


def program_deployment(spec: Spec, index: int, p: Program) -> Manifest:
    name = program_name(spec, index, p)
    labels = _labels(spec, name[len(base_name(spec)) + 1:])
    c = _container(spec, labels[LABEL_COMPONENT], shlex.split(p.command), _env(spec, p.env),
                   p.directory or spec.kubernetes.directory)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec, name, labels),
        "spec": {
            # autostart = false: deployed, not running; `kubectl scale` starts it.
            "replicas": p.numprocs if p.autostart else 0,
            "selector": {"matchLabels": labels},
            "template": _pod(spec, labels, [c]),
        },
    }


def manifests(spec: Spec) -> List[Manifest]:
    """Every manifest for ``spec``, in apply order: the migration Job first."""
    out: List[Manifest] = []
    job = migration_job(spec)
    if job:
        out.append(job)
    out += [web_deployment(spec), service(spec), disruption_budget(spec)]
    names: Dict[str, str] = {}
    for i, p in enumerate(spec.programs):
        d = program_deployment(spec, i, p)
        other = names.setdefault(d["metadata"]["name"], p.name)
        if other != p.name:
            raise SpecError(spec.source, f"programs[{i}].name", f"{p.name!r} and {other!r} are the same name on "
                            "Kubernetes ('_' becomes '-')", "rename one of them")
        out.append(d)
    return out


# --- the kubectl sequence, and what the target ignores ----------------------------------


def kubectl_steps(spec: Spec, path: str) -> List[str]:
    """The commands that apply ``path`` so that no pod of a release starts before its migration."""
    q = shlex.quote(path)
    ns = f" -n {spec.kubernetes.namespace}" if spec.kubernetes.namespace else ""
    steps = []
    secrets = sorted(secret_env_names(spec) | {v for k, v in spec.server.uvicorn if UVICORN_SETTINGS[k].kind == "env"})
    if secrets:
        literals = " ".join(f'--from-literal={n}="${n}"' for n in secrets)
        steps.append(f"kubectl create secret generic {secret_name(spec)}{ns} {literals}")
    job = migration_job_name(spec)
    if job and spec.migrate:
        steps.append(f"kubectl apply -f {q} -l {LABEL_COMPONENT}={MIGRATE}")
        steps.append(f"kubectl wait{ns} --for=condition=complete "
                     f"--timeout={math.ceil(spec.migrate.timeout) + WAIT_MARGIN}s job/{job}")
    steps.append(f"kubectl apply -f {q}")
    return steps


# Spec keys with no meaning on a cluster, and what does their job there; a pattern ending
# in '*' is a whole table, named as such.
IGNORED: Sequence[Tuple[str, str]] = (
    ("supervisord*", "the kubelet runs the containers"),
    ("server.bind", "the container listens on 0.0.0.0:kubernetes.port, the Service on kubernetes.service_port"),
    ("server.workers", "one uvicorn per pod; kubernetes.replicas pods"),
    ("server.socket_mode", "no unix socket"),
    ("server.socket_owner", "no unix socket"),
    ("app.python", "kubernetes.python, the interpreter in the image"),
    ("app.directory", "kubernetes.directory, default the image's WORKDIR"),
    ("app.user", "kubernetes.run_as_user, a numeric id"),
    ("memory.budget", "the scheduler places pods by their memory request"),
    ("memory.check_interval", "the container's cgroup limit acts at once"),
    ("memory.limit_checks", "the container's cgroup limit acts at once"),
    ("crash_loop*", "the kubelet's CrashLoopBackOff: 10 s, doubling to 5 min"),
    ("alerts*", "Kubernetes events and the cluster's monitoring"),
    ("listener*", "no event listener"),
    ("metrics*", "no supervisord to ask: scrape the pods (kube-state-metrics, the app's own /metrics)"),
    ("release*", "the image is the release: its migration Job runs once per image, the Deployment's rollout "
                 "switches, `kubectl rollout undo` rolls back (docs/releases.md)"),
    ("https*", "TLS ends at the cluster's Ingress or load balancer"),
)


def ignored_keys(spec: Spec) -> List[Tuple[str, str]]:
    """(keys, why) for each group of keys the file sets that this target does not use."""
    out = []
    for pattern, why in IGNORED:
        hits = sorted(k for k in spec.keys if fnmatch(k, pattern))
        if hits and pattern.endswith("*"):
            table = pattern[:-1]
            out.append((f"[[{table}]]" if hits[0].startswith(f"{table}[") else f"[{table}]", why))
        elif hits:
            out.append((", ".join(hits), why))
    return out


def header(spec: Spec, command: str, path: str) -> List[str]:
    lines = [f"Generated by supervisor-fastapi {__version__} from {spec.source}.",
             f"Do not edit: change the spec and run `{command}`.",
             "Apply in this order (no pod of a release starts before its migration has completed):"]
    return lines + [f"  {step}" for step in kubectl_steps(spec, path)]


def render(spec: Spec, command: str, path: str) -> str:
    """The manifests as multi-document YAML; ``path`` is where the user will keep them (for the header)."""
    return yaml.dump_all(manifests(spec), header(spec, command, path))
