"""Chaos, bounded in time: kill -9 of a random serving worker every 2 s while a client keeps asking.

What an OOM killer or an operator does to a busy host (issue #8, point 1): a worker killed
from outside after it was serving must be replaced at once, so the app is never without an
answer for 2 s or more, however many kills there are.
"""

import http.client
import json
import os
import random
import signal
import threading
import time
from typing import Dict, List, Optional, Set

from supervisor_fastapi.layout import Names

from .conftest import Deployment

KILL_EVERY = 2.0
KILLS = 10  # ~20 s of chaos
TAIL = 2.0  # the client keeps asking after the last kill
RESTORE_WITHIN = 8.0  # after the chaos: both workers back, new pids, each answering
MAX_GAP = 2.0


class Client(threading.Thread):
    """Connection-per-request GETs in a loop; the time and pid of every successful answer."""

    def __init__(self, port: int, timeout: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.port, self.timeout = port, timeout
        self.answers: List[float] = []
        self.pids: Set[int] = set()
        self.failed = 0
        self.done = threading.Event()
        self.started_at = self.ended_at = 0.0

    def one(self) -> Optional[int]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.request("GET", "/", headers={"Connection": "close"})
            resp = conn.getresponse()
            body = resp.read()
            return int(json.loads(body)["pid"]) if resp.status == 200 else None
        except (OSError, ValueError, KeyError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def run(self) -> None:
        self.started_at = time.monotonic()
        deadline = self.started_at + KILLS * KILL_EVERY + TAIL + RESTORE_WITHIN + 30  # bound even if nobody sets done
        while not self.done.is_set() and time.monotonic() < deadline:
            pid = self.one()
            if pid is None:
                self.failed += 1
            else:
                self.answers.append(time.monotonic())
                self.pids.add(pid)
            time.sleep(0.005)
        self.ended_at = time.monotonic()

    def longest_gap(self) -> "tuple[float, float]":
        """(start, seconds) of the longest stretch with no answer, the edges of the run included."""
        edges = [self.started_at] + self.answers + [self.ended_at]
        return max(((a, b - a) for a, b in zip(edges, edges[1:])), key=lambda g: g[1])


def web_workers(d: Deployment) -> List[Dict]:
    group = Names(d.spec.app.name).web
    return [i for i in d.infos() if i["group"] == group]


def test_repeated_kill_9_of_serving_workers_never_leaves_the_app_without_an_answer(deploy):
    d = deploy()  # 2 workers
    rng = random.Random(8)
    client = Client(d.port)
    client.start()
    kills: List[Dict] = []  # t (since the client started), pid, state of every worker at the kill
    idle: List[float] = []  # kill times at which no worker was RUNNING
    t0 = time.monotonic()
    try:
        for i in range(KILLS):
            time.sleep(max(0.0, t0 + 1.0 + i * KILL_EVERY - time.monotonic()))
            running = [i for i in web_workers(d) if i["statename"] == "RUNNING" and i["pid"]]
            serving = [i for i in running if i["pid"] in client.pids] or running
            at = time.monotonic() - client.started_at
            if not serving:
                idle.append(at)
                continue
            victim = rng.choice(serving)
            os.kill(victim["pid"], signal.SIGKILL)
            kills.append({"t": round(at, 2), "pid": victim["pid"], "name": victim["name"]})
        time.sleep(TAIL)
        # Every killed worker replaced: both workers RUNNING with new pids, each answering.
        # The client goes on meanwhile, so an outage that outlasts the chaos is measured whole.
        killed = {k["pid"] for k in kills}
        deadline = time.monotonic() + RESTORE_WITHIN
        answered: Set[int] = set()
        restored = False
        while time.monotonic() < deadline and not restored:
            pids = {i["pid"] for i in web_workers(d) if i["statename"] == "RUNNING" and i["pid"]}
            pid = client.one()
            if pid:
                answered.add(pid)
            restored = len(pids) == d.spec.server.workers and not pids & killed and pids <= answered
            time.sleep(0.05)
    finally:
        client.done.set()
        client.join(5)
    start, gap = client.longest_gap()

    problems = []
    if gap >= MAX_GAP:
        problems.append(f"no answer for {gap:.2f} s, from {start - client.started_at:.2f} s to "
                        f"{start - client.started_at + gap:.2f} s (limit {MAX_GAP:g} s)")
    if not restored:
        problems.append(f"the killed workers were not all replaced within {RESTORE_WITHIN:g} s after the chaos")
    if idle:
        problems.append(f"no worker RUNNING to kill at {', '.join(f'{t:.1f}' for t in idle)} s")
    states = [f"{i['name']} {i['statename']} {i['description']!r}" for i in web_workers(d)]
    context = (f"kills (s since the client started): {kills}\n"
               f"answers {len(client.answers)}, failed {client.failed}\n"
               f"supervisord now: {states}\n"
               f"listener incidents: {json.dumps(d.listener_state().get('incidents', {}), sort_keys=True)}")
    assert not problems, "\n".join(problems) + "\n" + context
