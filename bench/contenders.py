"""The four ways to run the same app with N workers, behind one small interface.

Each contender starts in a session of its own (``start_new_session``), so that whatever it
spawns, including supervisord's children that sit in their own process groups, is found
and killed by session id when it stops.
"""

import os
import signal
import subprocess
import sys
from typing import Callable, Dict, List, Optional, Type

import psutil
from procs import is_alive, kill_session, probe, tree, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
APP = "app:app"


class StartError(RuntimeError):
    """A contender did not come up; the message carries its log tail."""


def tool(name: str) -> str:
    """A console script of this venv (uvicorn, gunicorn), else whatever PATH has."""
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else name


def has_rolling_restart() -> bool:
    """True once `supervisor-fastapi restart` exists in the installed package."""
    proc = subprocess.run([sys.executable, "-m", "supervisor_fastapi", "restart", "--help"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    return proc.returncode == 0


class Contender:
    key = ""
    label = ""
    restart_method = ""

    def __init__(self, workers: int, port: int, folder: str, stack: str, access_log: bool) -> None:
        self.workers = workers
        self.port = port
        self.folder = folder
        self.stack = stack  # "auto" or "asyncio-h11"
        self.access_log = access_log
        self.proc: Optional[subprocess.Popen] = None
        self.out_path = os.path.join(folder, "out.log")
        os.makedirs(folder, exist_ok=True)

    # --- to implement -------------------------------------------------------------------
    def argv(self) -> List[str]:
        raise NotImplementedError

    def worker_pids(self) -> List[int]:
        raise NotImplementedError

    def restart(self) -> None:
        """Run this contender's own restart method (may return before the restart is done)."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Write whatever files the contender needs before it starts."""

    def extra_restarts(self) -> Dict[str, Callable[[], None]]:
        """Further restart methods worth measuring (method -> action); none by default."""
        return {}

    def kill_candidates(self) -> List[int]:
        """The worker pids a chaos monkey may kill: the manager's children unless it says better."""
        return self.worker_pids()

    def manager_view(self) -> List[str]:
        """What the manager says about its workers (for the report when a worker stays down)."""
        return [f"worker pid {p}" for p in self.worker_pids()]

    def graceful_stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    # --- common -------------------------------------------------------------------------
    @property
    def root(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def children_matching(self, *words: str, exclude: tuple = ()) -> List[int]:
        out = []
        for p in tree(self.root)[1:]:
            try:
                cmd = " ".join(p.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if all(w in cmd for w in words) and not any(x in cmd for x in exclude) and is_alive(p.pid):
                out.append(p.pid)
        return sorted(out)

    def start(self) -> None:
        self.prepare()
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv(), cwd=HERE, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def all_answering(self, seen: set) -> bool:
        """Probe once; True when every current worker pid has answered some probe."""
        if not self.running():
            raise StartError(f"{self.label} exited with status {self.proc.returncode if self.proc else '?'}\n"
                             + self.log_tail())
        seen.update(probe(self.port, parallel=4, timeout=1.0))
        pids = self.worker_pids()
        return len(pids) == self.workers and set(pids) <= seen

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds until N workers run and each has answered a request; StartError on failure."""
        seen: set = set()
        ok, waited = wait_until(lambda: self.all_answering(seen), timeout, interval=0.02)
        if not ok:
            raise StartError(f"{self.label}: not ready after {timeout:g} s (workers {self.worker_pids()}, "
                             f"answered {sorted(seen)})\n{self.log_tail()}")
        return waited

    def replaced(self, old: set) -> bool:
        """True when no old worker is left and N workers run."""
        pids = self.worker_pids()
        return not (old & set(pids)) and not any(is_alive(p) for p in old) and len(pids) == self.workers

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.graceful_stop()
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            kill_session(self.proc.pid)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_tail(self, n: int = 30) -> str:
        texts = []
        for path in self.log_files():
            try:
                with open(path, errors="replace") as f:
                    lines = f.readlines()[-n:]
                texts.append(f"--- {path} ---\n" + "".join(lines))
            except OSError:
                continue
        return "\n".join(texts)

    def log_files(self) -> List[str]:
        return [self.out_path]

    def uvicorn_flags(self) -> List[str]:
        flags = [] if self.access_log else ["--no-access-log"]
        if self.stack == "asyncio-h11":
            flags += ["--loop", "asyncio", "--http", "h11"]
        return flags


class SupervisordBased(Contender):
    conf_path = ""

    def argv(self) -> List[str]:
        return [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", self.conf_path]

    def ctl(self, *args: str, timeout: float = 120.0) -> str:
        proc = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", self.conf_path, *args],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        return proc.stdout


class DocsRecipe(SupervisordBased):
    """The Uvicorn docs' Supervisor recipe, plus only the sections supervisorctl needs."""

    key = "docs"
    label = "uvicorn docs recipe (fcgi-program + --fd 0)"
    restart_method = "supervisorctl restart uvicorn:*"

    def prepare(self) -> None:
        self.conf_path = os.path.join(self.folder, "supervisord.conf")
        command = " ".join([tool("uvicorn"), "--fd", "0", APP] + self.uvicorn_flags())
        with open(self.conf_path, "w") as f:
            f.write(docs_recipe_conf(self.folder, self.port, command, self.workers, HERE))

    def worker_pids(self) -> List[int]:
        return self.children_matching("--fd 0")

    def restart(self) -> None:
        self.ctl("restart", "uvicorn:*")

    def log_files(self) -> List[str]:
        return [self.out_path, os.path.join(self.folder, "supervisord.log")]


def docs_recipe_conf(folder: str, port: int, command: str, workers: int, app_dir: str) -> str:
    """The recipe from uvicorn's docs (Deployment -> Supervisor).

    Changes to it: 127.0.0.1 instead of localhost, the venv's uvicorn, a ``directory`` so
    the app imports, the worker count, and the four sections supervisorctl needs.
    """
    return f"""\
[unix_http_server]
file={folder}/supervisor.sock

[supervisord]
logfile={folder}/supervisord.log
pidfile={folder}/supervisord.pid

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{folder}/supervisor.sock

[fcgi-program:uvicorn]
socket=tcp://127.0.0.1:{port}
command={command}
numprocs={workers}
process_name=uvicorn-%(process_num)d
stdout_logfile=/dev/stdout
stdout_logfile_maxbytes=0
directory={app_dir}
"""


def compile_package() -> None:
    """Byte-compile supervisor_fastapi where it is installed, as pip does for the others.

    pip writes the .pyc files of uvicorn, gunicorn and FastAPI at install time; an editable
    install of this package (the bench's) has none, and with PYTHONDONTWRITEBYTECODE set (CI
    sets it) every worker, the listener and supervisord would compile it from source at each
    start (measured here: ~150 ms more per worker start, ~1.5 MB more RSS for the listener),
    which no installed deployment pays. compileall writes them whatever that variable says.
    """
    import compileall

    import supervisor_fastapi

    for folder in supervisor_fastapi.__path__:
        compileall.compile_dir(folder, quiet=1)


class SupervisorFastAPI(SupervisordBased):
    """This package: spec -> conf with `supervisor-fastapi render`, then supervisord."""

    key = "sf"
    label = "supervisor-fastapi"
    restart_method = ""  # set in prepare(): the rolling restart, or its by-hand fallback

    def prepare(self) -> None:
        import tomli_w

        compile_package()
        self.spec_path = os.path.join(self.folder, "supervisor-fastapi.toml")
        self.conf_path = os.path.join(self.folder, "supervisord.conf")
        uvicorn: Dict[str, object] = {}
        if not self.access_log:
            uvicorn["access_log"] = False
        if self.stack == "asyncio-h11":
            uvicorn.update(loop="asyncio", http="h11")
        spec = {
            "app": {"name": "web", "asgi": APP, "directory": HERE, "python": sys.executable},
            "server": {"bind": f"tcp://127.0.0.1:{self.port}", "workers": self.workers, "uvicorn": uvicorn},
            "supervisord": {"run_dir": os.path.join(self.folder, "run")},
        }
        with open(self.spec_path, "w") as f:
            f.write(tomli_w.dumps(spec))
        proc = subprocess.run([sys.executable, "-m", "supervisor_fastapi", "render", "-c", self.spec_path,
                               "-o", self.conf_path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=60)
        if proc.returncode != 0:
            raise StartError(f"supervisor-fastapi render failed:\n{proc.stdout}")
        self.rolling = has_rolling_restart()
        self.restart_method = ("supervisor-fastapi restart" if self.rolling
                               else "supervisorctl restart web:web_NN, one worker at a time "
                                    "(`supervisor-fastapi restart` not in this checkout yet)")

    def worker_pids(self) -> List[int]:
        return self.children_matching("supervisor_fastapi.runtime.worker")

    def web_infos(self) -> List[Dict[str, object]]:
        """supervisord's getAllProcessInfo, web group only (this bench's spec names the app "web")."""
        import xmlrpc.client

        from supervisor.xmlrpc import SupervisorTransport

        from supervisor_fastapi.layout import Layout, Names

        transport = SupervisorTransport("", "", f"unix://{Layout(os.path.join(self.folder, 'run')).socket}")
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        return [i for i in proxy.supervisor.getAllProcessInfo() if i["group"] == Names("web").web]

    def kill_candidates(self) -> List[int]:
        # The pids supervisord itself manages (STARTING or RUNNING), as an operator would see them.
        return sorted(int(i["pid"]) for i in self.web_infos()  # type: ignore[call-overload]
                      if i["pid"] and i["statename"] in ("STARTING", "RUNNING"))

    def manager_view(self) -> List[str]:
        return [f"{i['name']} {i['statename']} {i['description']}" for i in self.web_infos()]

    def extra_restarts(self) -> Dict[str, Callable[[], None]]:
        # The docs recipe's restart method on this package's conf, whose rpcinterface plugin
        # holds the socket open while no worker runs.
        return {"supervisorctl restart web:*": lambda: self.ctl("restart", "web:*") and None}

    def restart(self) -> None:
        if self.rolling:
            proc = subprocess.run([sys.executable, "-m", "supervisor_fastapi", "restart", "-c", self.spec_path],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"supervisor-fastapi restart exited {proc.returncode}:\n{proc.stdout}")
            return
        for i in range(self.workers):
            self.ctl("restart", f"web:web_{i:02d}")

    def log_files(self) -> List[str]:
        run = os.path.join(self.folder, "run")
        logs = os.path.join(run, "logs")
        names = sorted(os.listdir(logs)) if os.path.isdir(logs) else []
        return [self.out_path, os.path.join(run, "supervisord.log")] + [os.path.join(logs, n) for n in names]


class UvicornWorkers(Contender):
    key = "uvicorn"
    label = "uvicorn --workers N"
    restart_method = "SIGHUP to the uvicorn parent"

    def argv(self) -> List[str]:
        return [tool("uvicorn"), APP, "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", str(self.workers)] + self.uvicorn_flags()

    def worker_pids(self) -> List[int]:
        return self.children_matching("spawn_main", exclude=("resource_tracker",))

    def restart(self) -> None:
        os.kill(self.root, signal.SIGHUP)


class GunicornUvicorn(Contender):
    key = "gunicorn"
    label = "gunicorn -k uvicorn_worker.UvicornWorker"
    restart_method = "SIGHUP to the gunicorn arbiter"

    def argv(self) -> List[str]:
        worker = "uvicorn_worker.UvicornH11Worker" if self.stack == "asyncio-h11" else "uvicorn_worker.UvicornWorker"
        argv = [tool("gunicorn"), APP, "-w", str(self.workers), "-k", worker, "-b", f"127.0.0.1:{self.port}"]
        return argv + (["--access-logfile", "-"] if self.access_log else [])

    def worker_pids(self) -> List[int]:
        return self.children_matching()

    def restart(self) -> None:
        os.kill(self.root, signal.SIGHUP)


CONTENDERS: Dict[str, Type[Contender]] = {c.key: c for c in (DocsRecipe, SupervisorFastAPI, UvicornWorkers,
                                                            GunicornUvicorn)}
