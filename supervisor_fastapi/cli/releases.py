"""Release mode (``[release]``): deploy, rollback and the list of releases (docs/releases.md).

Under app.directory: ``releases/<id>/`` (one per deploy, never changed after its build),
``current`` (a symlink to the serving release) and ``shared/`` (paths linked into every
release). The web workers' and the migration's directory is ``current``: supervisord
resolves it at each spawn, so every start path (a crash respawn, `supervisorctl start`,
`update`, `reload`, supervisord restarted) starts the current release. `deploy` runs a new
release's build, pre-flight and migration *before* anything points at it, outside the
gate of the running supervisord: a failed migration leaves ``current`` and every worker of
it as they were. Only a migration that exited 0 switches ``current``, then the workers
roll onto it one at a time (drain, as `restart`).

The record of builds, migration results and switches is run_dir/releases.json, written
here only (as root on a server): the migration program supervisord starts reads it and
does not migrate a release again (runtime/release_migrate.py).
"""

import dataclasses
import os
import shlex
import shutil
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ..contracts.files import (
    MIGRATION_FAILED,
    MIGRATION_OK,
    migration_succeeded,
    read_release_record,
    valid_release_id,
    write_json_atomic,
)
from ..contracts.rpc import control_state, notify
from ..errors import DeployError, UserError
from ..layout import Layout, Names, Releases
from ..spec import Spec
from . import checks, control

Progress = Callable[[str], None]
RECORD_MODE = 0o644  # the migration program (app.user) reads it; only its writer (root) may change it
TAIL_BYTES = 3000
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


# --- pure decisions -----------------------------------------------------------------------


def new_release_id(now: float, taken: Iterable[str]) -> str:
    """A sortable id from the UTC time (``20261204164500``), suffixed when that second is taken."""
    base = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    taken = set(taken)
    rid, n = base, 1
    while rid in taken:
        n += 1
        rid = f"{base}-{n}"
    return rid


def previous_release(history: Sequence[str], current: Optional[str], existing: Iterable[str]) -> Optional[str]:
    """The release that served before ``current``: the last other one it switched from that still exists."""
    on_disk = set(existing)
    for rid in reversed(list(history)):
        if rid != current and rid in on_disk:
            return rid
    return None


def to_prune(by_age: Sequence[str], current: Optional[str], previous: Optional[str], keep: int) -> List[str]:
    """Releases to delete, oldest first: all but the newest ``keep`` old ones; never current or previous."""
    old = [rid for rid in by_age if rid not in (current, previous)]
    return old[:max(0, len(old) - keep)]


# --- the record ---------------------------------------------------------------------------


def load_record(spec: Spec) -> Dict[str, Any]:
    return read_release_record(Layout(spec.run_dir).release_record)


def save_record(spec: Spec, record: Dict[str, Any]) -> None:
    write_json_atomic(Layout(spec.run_dir).release_record, record, RECORD_MODE)


def _entry(record: Dict[str, Any], rid: str) -> Dict[str, Any]:
    return record["releases"].setdefault(rid, {})


def on_disk(rel: Releases) -> List[str]:
    try:
        names = os.listdir(rel.releases_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if valid_release_id(n) and os.path.isdir(rel.release(n))
                  and not os.path.islink(rel.release(n)))


def by_age(rel: Releases, record: Dict[str, Any]) -> List[str]:
    """Releases on disk, oldest first (the record's creation time, else the folder's)."""
    def created(rid: str) -> float:
        when = record["releases"].get(rid, {}).get("created")
        if isinstance(when, (int, float)):
            return float(when)
        try:
            return os.stat(rel.release(rid)).st_mtime
        except OSError:
            return 0.0
    return sorted(on_disk(rel), key=lambda rid: (created(rid), rid))


# --- the steps with side effects ----------------------------------------------------------


def _require_release_mode(spec: Spec, command: str) -> Releases:
    if spec.release is None:
        raise UserError(f"{spec.source}: `{command}` needs release mode: add a [release] table (keep, shared, build; "
                        "see docs/releases.md); without it `up` and `restart` run the code in app.directory in place")
    if spec.supervisord.hosting().shared:
        raise UserError(f"{spec.source}: release mode runs its own supervisord for now: remove supervisord.serverurl")
    rel = Releases(spec.app.directory)
    if os.path.lexists(rel.current) and not os.path.islink(rel.current):
        raise UserError(f"{rel.current} is not a symlink; move it away: release mode makes it point at the "
                        "serving release")
    return rel


def _safe_members(tar: tarfile.TarFile, archive: str) -> Tuple[List[tarfile.TarInfo], str]:
    """The archive's members, refused unless each is a plain file, folder or an inside link; and the
    single top folder to strip ('' when the contents are at the top)."""
    members = tar.getmembers()
    tops = set()
    for m in members:
        parts = [p for p in m.name.split("/") if p not in ("", ".")]
        if m.name.startswith("/") or ".." in parts:
            raise UserError(f"{archive}: {m.name!r} points outside the release; refusing the archive")
        if not (m.isfile() or m.isdir() or m.issym()):
            raise UserError(f"{archive}: {m.name!r} is not a file, folder or symlink; refusing the archive")
        if m.issym():
            target = os.path.normpath(os.path.join(os.path.dirname("/".join(parts)), m.linkname))
            if m.linkname.startswith("/") or target.startswith(".."):
                raise UserError(f"{archive}: the symlink {m.name!r} points outside the release ({m.linkname}); "
                                "refusing the archive")
        if parts:
            tops.add(parts[0])
    top = next(iter(tops)) if len(tops) == 1 else ""
    if top and not any(m.isdir() and m.name.strip("/").lstrip("./") == top for m in members) \
            and all("/" not in m.name.strip("/").lstrip("./") for m in members):
        top = ""  # one plain file at the top
    return members, top


def unpack(src: str, dest: str) -> None:
    """Copy a folder, or extract a .tar.gz (a single top folder is stripped), into ``dest`` (new)."""
    if os.path.isdir(src):
        shutil.copytree(src, dest, symlinks=True)
        return
    try:
        with tarfile.open(src, "r:gz") as tar:
            members, top = _safe_members(tar, src)
            os.makedirs(dest)
            for m in members:
                parts = [p for p in m.name.split("/") if p not in ("", ".")]
                if top:
                    parts = parts[1:]
                if not parts:
                    continue
                m.name = "/".join(parts)
                # Checked above; "tar" keeps modes and links as they are (no data filter warning).
                kwargs = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
                tar.extract(m, dest, **kwargs)  # type: ignore[arg-type]
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.filename:
            raise
        raise UserError(f"{src}: not a readable .tar.gz ({exc})") from None


def _chown_to(path: str, owner: Optional[Tuple[int, int]]) -> None:
    if owner is not None:
        os.chown(path, *owner, follow_symlinks=False)


def app_owner(spec: Spec) -> Optional[Tuple[int, int]]:
    """(uid, gid) of app.user when this runs as root, else None (files stay the caller's)."""
    if not spec.app.user or os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(spec.app.user)
    except KeyError:
        raise UserError(f"{spec.source}: app.user: no user {spec.app.user!r} on this host") from None
    return entry.pw_uid, entry.pw_gid


def link_shared(spec: Spec, rel: Releases, release_dir: str) -> None:
    """Replace each ``[release] shared`` path of the release by a symlink into shared/; a path
    shared/ lacks is seeded from this release's copy (or made an empty folder), owned by app.user."""
    assert spec.release is not None
    owner = app_owner(spec)
    for path in spec.release.shared:
        target, inside = os.path.join(rel.shared, path), os.path.join(release_dir, path)
        if not os.path.lexists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.isdir(inside) and not os.path.islink(inside):
                shutil.copytree(inside, target, symlinks=True)
            elif os.path.isfile(inside) and not os.path.islink(inside):
                shutil.copy2(inside, target)
            else:
                os.makedirs(target)
            _chown_to(target, owner)
        if os.path.isdir(inside) and not os.path.islink(inside):
            shutil.rmtree(inside)
        elif os.path.lexists(inside):
            os.unlink(inside)
        os.makedirs(os.path.dirname(inside), exist_ok=True)
        os.symlink(target, inside)


def _run_logged(argv: List[str], cwd: str, env: Dict[str, str], log_path: str, timeout: float,
                preexec: Optional[Callable[[], None]] = None) -> Tuple[Optional[int], str]:
    """Run ``argv`` with its output appended to ``log_path``: (exit status or None on timeout, this run's tail)."""
    with open(log_path, "ab") as log:
        start = log.tell()
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(shlex.quote(a) for a in argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, preexec_fn=preexec, start_new_session=True)
        except OSError as exc:
            return 127, f"cannot run {argv[0]}: {exc.strerror}"
        try:
            rc: Optional[int] = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the command may have started children of its own
            proc.wait()
            rc = None
    with open(log_path, "rb") as f:
        f.seek(max(start, os.path.getsize(log_path) - TAIL_BYTES))
        return rc, f.read().decode(errors="replace")


def _env(spec: Spec, rid: str, release_dir: str, *extra: Tuple[Tuple[str, str], ...]) -> Dict[str, str]:
    """The environment supervisord would give the release's programs (its rendered PATH, app.env)."""
    from ..generate.conf import rendered_path

    env = dict(os.environ)
    env["PATH"] = rendered_path(release_spec(spec, Releases(spec.app.directory), release_dir))
    for table in (spec.app.env,) + extra:
        env.update(table)
    env.update({"SUPERVISOR_FASTAPI_RELEASE": rid, "SUPERVISOR_FASTAPI_RELEASE_DIR": release_dir})
    return env


def run_build(spec: Spec, rid: str, release_dir: str, log_path: str) -> Tuple[Optional[int], str]:
    """``[release] build`` in the release's folder, as the user running deploy (it writes the release)."""
    assert spec.release is not None and spec.release.build
    return _run_logged(["/bin/sh", "-c", spec.release.build], release_dir, _env(spec, rid, release_dir), log_path,
                       timeout=3600)


def run_migration(spec: Spec, rid: str, release_dir: str, log_path: str) -> Tuple[Optional[int], str]:
    """``[migrate] command`` from the release's folder, as app.user, as supervisord would run it."""
    assert spec.migrate is not None
    demoted = checks.Demoted(spec.app.user)
    return _run_logged(shlex.split(spec.migrate.command), release_dir,
                       _env(spec, rid, release_dir, spec.migrate.env), log_path, spec.migrate.timeout,
                       demoted.preexec)


def release_spec(spec: Spec, rel: Releases, release_dir: str) -> Spec:
    """``spec`` as if the app lived in ``release_dir`` (in place): for its pre-flight before the switch.
    An app.python under ``current`` is taken from the release itself."""
    python = spec.app.python
    if python.startswith(rel.current + os.sep):
        python = release_dir + python[len(rel.current):]
    return dataclasses.replace(spec, app=dataclasses.replace(spec.app, directory=release_dir, python=python),
                               release=None)


def switch(rel: Releases, rid: str) -> None:
    """Point ``current`` at release ``rid`` atomically (a new link renamed over the old one)."""
    tmp = f"{rel.current}.{os.getpid()}.tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(rel.link_target(rid), tmp)
    os.replace(tmp, rel.current)


def _alert(spec: Spec, kind: str, summary: str, details: Dict[str, Any]) -> None:
    """A one-off alert through the listener, when supervisord runs (a first deploy has none yet)."""
    layout = Layout(spec.run_dir)
    if not control.is_running(layout):
        return
    try:
        notify(control.rpc(layout), spec.app.name, kind, Names(spec.app.name).migrate, summary, details)
    except Exception:  # the alert must never hide the deploy's own result
        pass


def roll(spec: Spec, conf_path: str, command: str, progress: Progress, timeout: float) -> str:
    """Start the deployment on the current release (like `up`), or roll its workers onto it one at a time."""
    from . import deploy, edges, roll

    layout = Layout(spec.run_dir)
    if not control.is_running(layout):
        ready = deploy.up(spec, conf_path, command, progress, timeout)
        return f"started: {len(ready)} workers"
    deploy.render_to(spec, conf_path, command)
    proxy = control.rpc(layout, control.rpc_timeout(spec))
    replaced = deploy.apply_update(proxy, progress)
    names = Names(spec.app.name)
    web = names.web
    if spec.migrate and names.migrate in replaced and web not in replaced:
        # A changed [migrate] came back as a new program that runs now (and, the release
        # being recorded as migrated, exits 0 at once): the roll waits for the gate it shuts.
        _wait_gate_open(spec, proxy, progress)
    if web in replaced:
        ready = deploy.wait_ready(spec, proxy, layout, progress, timeout)
        return f"started: {len(ready)} workers"
    result = roll.rolling_restart(edges.local_edges(layout, spec.app.name, None, control.rpc_timeout(spec)), web,
                                  progress, timeout)
    if not result.ok:
        raise DeployError(f"rolling the workers onto the new release stopped at {result.failed}: {result.reason}")
    return f"rolled {len(result.restarted)} workers"


def _wait_gate_open(spec: Spec, proxy: Any, progress: Progress) -> None:
    assert spec.migrate is not None
    deadline = time.monotonic() + spec.migrate.timeout + 10
    while True:
        gate = (control_state(proxy, spec.app.name) or {}).get("gate") or {"state": "open"}
        if gate.get("state") == "open":
            return
        if gate.get("state") in ("failed", "timeout") or time.monotonic() > deadline:
            raise DeployError(f"the migration gate did not open: {gate.get('detail') or gate.get('state')}")
        time.sleep(0.1)


def _prune(spec: Spec, rel: Releases, record: Dict[str, Any], progress: Progress) -> None:
    assert spec.release is not None
    current = rel.current_id()
    previous = previous_release(record["history"], current, on_disk(rel))
    for rid in to_prune(by_age(rel, record), current, previous, spec.release.keep):
        shutil.rmtree(rel.release(rid), ignore_errors=True)
        record["releases"].pop(rid, None)
        progress(f"pruned release {rid}")


def _migrate_or_fail(spec: Spec, rel: Releases, record: Dict[str, Any], rid: str, progress: Progress) -> None:
    """Run the release's migration and record the result; on failure alert and raise (exit 1)."""
    assert spec.migrate is not None
    names, layout = Names(spec.app.name), Layout(spec.run_dir)
    log_path = layout.program_log(names.release_log(rid))
    progress(f"release {rid}: migrating ({spec.migrate.command}) in {rel.release(rid)}")
    t0 = time.time()
    rc, tail = run_migration(spec, rid, rel.release(rid), log_path)
    entry = _entry(record, rid)
    if rc != 0 and entry.get("migration") == MIGRATION_OK:
        # `rollback --migrate` whose rerun failed: the release's own migration did succeed once
        # (its schema is there); the failed rerun is recorded beside it, not over it.
        entry.update({"rerun": MIGRATION_FAILED, "rerun_at": time.time(), "exitstatus": rc})
    else:
        entry.update({"migration": MIGRATION_OK if rc == 0 else MIGRATION_FAILED, "migrated_at": time.time(),
                      "migration_seconds": round(time.time() - t0, 3), "exitstatus": rc})
        entry.pop("rerun", None)
    save_record(spec, record)
    if rc == 0:
        progress(f"release {rid}: migration exited 0 in {time.time() - t0:.1f} s")
        return
    why = f"ran longer than migrate.timeout ({spec.migrate.timeout:g} s)" if rc is None else f"exited with status {rc}"
    current = rel.current_id()
    keep = f"release {current} keeps serving with all its workers" if current else "nothing was started"
    summary = f"release {rid}: its migration {why}; nothing switched, {keep}"
    _alert(spec, "release_failed", summary, {"release": rid, "current": current, "exitstatus": rc,
                                             "log": log_path, "log_tail": tail[-TAIL_BYTES:]})
    lines = tail.rstrip().splitlines()[-15:]
    raise DeployError(f"{summary}\n--- last lines of {log_path} ---\n" + "\n".join(lines) +
                      "\n--- fix it and deploy again (`supervisor-fastapi releases` lists them)")


def deploy_release(spec: Spec, conf_path: str, command: str, src: str, progress: Progress,
                   release_id: Optional[str] = None, timeout: float = 60.0) -> str:
    """`deploy SRC`: a new release from SRC, built, checked and migrated before ``current`` points at it."""
    rel = _require_release_mode(spec, "deploy")
    assert spec.release is not None
    src = os.path.abspath(src)
    if not os.path.isdir(src) and not (os.path.isfile(src) and src.endswith(ARCHIVE_SUFFIXES)):
        raise UserError(f"{src}: deploy takes a folder or a .tar.gz of the app")
    if release_id is not None and not valid_release_id(release_id):
        raise UserError(f"--id {release_id!r}: use letters, digits, '.', '_' and '-' (at most 64, not starting "
                        "with '.')")
    from . import deploy

    deploy.make_dirs(spec)
    for folder in (rel.root, rel.releases_dir, rel.shared):
        os.makedirs(folder, exist_ok=True)
    record = load_record(spec)
    taken = set(on_disk(rel)) | set(record["releases"])
    rid = release_id or new_release_id(time.time(), taken)
    if rid in taken:
        raise UserError(f"release {rid} exists already ({rel.release(rid)}); releases are never changed: "
                        "pick another --id")
    release_dir = rel.release(rid)
    progress(f"release {rid}: copying {src}")
    unpack(src, release_dir)
    link_shared(spec, rel, release_dir)
    entry = _entry(record, rid)
    entry.update({"created": time.time(), "source": src})
    save_record(spec, record)
    log_path = Layout(spec.run_dir).program_log(Names(spec.app.name).release_log(rid))
    if spec.release.build:
        progress(f"release {rid}: building ({spec.release.build})")
        rc, tail = run_build(spec, rid, release_dir, log_path)
        entry["build"] = "ok" if rc == 0 else "failed"
        save_record(spec, record)
        if rc != 0:
            raise DeployError(f"release {rid}: [release] build {'timed out' if rc is None else f'exited {rc}'}; "
                              f"nothing switched\n--- last lines of {log_path} ---\n{tail.rstrip()}")
    problem = checks.preflight_problem(release_spec(spec, rel, release_dir))
    if problem:
        entry["preflight"] = "failed"
        save_record(spec, record)
        raise DeployError(f"release {rid}: the app does not import from the new release, nothing switched: {problem}")
    progress(f"release {rid}: the app imports from {release_dir}")
    if spec.migrate:
        _migrate_or_fail(spec, rel, record, rid, progress)
    else:
        entry["migration"] = "none"
    return _switch_and_roll(spec, rel, record, rid, conf_path, command, progress, timeout)


def _switch_and_roll(spec: Spec, rel: Releases, record: Dict[str, Any], rid: str, conf_path: str, command: str,
                     progress: Progress, timeout: float) -> str:
    before = rel.current_id()
    switch(rel, rid)
    record["history"] = [h for h in record["history"] if h != rid][-50:] + [rid]
    _entry(record, rid)["switched_at"] = time.time()
    save_record(spec, record)
    progress(f"current -> releases/{rid}" + (f" (was {before})" if before else ""))
    how = roll(spec, conf_path, command, progress, timeout)
    _prune(spec, rel, record, progress)
    save_record(spec, record)
    return f"{spec.app.name}: release {rid} is current; {how}"


def rollback(spec: Spec, conf_path: str, command: str, progress: Progress, target: Optional[str] = None,
             migrate: bool = False, timeout: float = 60.0) -> str:
    """`rollback [ID]`: switch to the previous (or named) release and roll; migrate only if asked."""
    rel = _require_release_mode(spec, "rollback")
    record = load_record(spec)
    current = rel.current_id()
    existing = on_disk(rel)
    if target is None:
        target = previous_release(record["history"], current, existing)
        if target is None:
            raise UserError("no previous release to roll back to (`supervisor-fastapi releases` lists them)")
    if target not in existing:
        raise UserError(f"no release {target!r} in {rel.releases_dir} (`supervisor-fastapi releases` lists them)")
    if target == current:
        raise UserError(f"release {target} is current already")
    if migrate and spec.migrate:
        _migrate_or_fail(spec, rel, record, target, progress)
    elif spec.migrate and not migration_succeeded(record, target):
        raise UserError(f"release {target}'s migration has not succeeded "
                        f"({record['releases'].get(target, {}).get('migration') or 'never ran'}); no worker may serve "
                        "it: pass --migrate to run it first")
    return _switch_and_roll(spec, rel, record, target, conf_path, command, progress, timeout)


@dataclass(frozen=True)
class ReleaseRow:
    id: str
    created: Optional[float]
    migration: str
    current: bool
    previous: bool


def list_releases(spec: Spec) -> List[ReleaseRow]:
    rel = _require_release_mode(spec, "releases")
    record = load_record(spec)
    current = rel.current_id()
    previous = previous_release(record["history"], current, on_disk(rel))
    rows = []
    for rid in by_age(rel, record):
        entry = record["releases"].get(rid, {})
        migration = str(entry.get("migration") or ("build failed" if entry.get("build") == "failed" else
                                                   "pre-flight failed" if entry.get("preflight") else "-"))
        if entry.get("rerun") == MIGRATION_FAILED:
            migration += " (a rerun failed)"
        created = entry.get("created")
        rows.append(ReleaseRow(rid, float(created) if isinstance(created, (int, float)) else None, migration,
                               rid == current, rid == previous))
    return rows


def format_releases(rows: Sequence[ReleaseRow]) -> str:
    if not rows:
        return "no releases yet: supervisor-fastapi deploy SRC"
    width = max(len(r.id) for r in rows)
    lines = [f"  {'ID':<{width}}  {'CREATED (UTC)':<19}  MIGRATION"]
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created)) if r.created else "-"
        mark = "*" if r.current else " "
        note = "  (current)" if r.current else "  (previous)" if r.previous else ""
        lines.append(f"{mark} {r.id:<{width}}  {when:<19}  {r.migration}{note}")
    return "\n".join(lines)
