"""[metrics]: the exporter program as Prometheus sees it, against real workers.

- N requests add exactly N to http_requests_total (counted in the workers, flushed on beats);
- kill -9 of a ready worker adds exactly 1 to its restarts_total{cause="killed"}, and its
  request counters do not go backwards across the restart;
- a memory recycle by the watchdog adds 1 to cause="memory" (and nothing to "killed"), and its
  alert is counted in alerts_total{result="sent"};
- a rolling restart adds 1 to cause="rolled" per worker, a watchdog kill of a hung worker 1 to
  cause="hung" (neither counts as killed);
- a crash loop shows as held=1 with held_until_seconds at the retry, its crashes counted, and
  held=0 once the fix lets the retry serve;
- `status --watch` refreshes with request rates, is bounded by --count and exits 0 on Ctrl-C;
- `promtool check metrics` accepts the exposition; a real Prometheus scrapes it and loads
  the documented rules file (docs/metrics-rules.yml) without errors.
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from typing import Dict, Tuple

import pytest

from tests.ports import free_port

from .conftest import wait_until
from .test_restart_socket import ready_pids

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RULES = os.path.join(ROOT, "docs", "metrics-rules.yml")
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$')
Series = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def scrape(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read().decode()
        assert resp.status == 200, body
        assert resp.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
        return body
    finally:
        conn.close()


def parse(text: str) -> Series:
    out: Series = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, line
        labels = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(series: Series, name: str, **labels: str) -> float:
    """The sum of the series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in series.items() if n == name and want <= set(ls))


def metrics_deploy(deploy, extra=None):
    port = free_port()
    d = deploy(dict({"metrics": {"bind": f"127.0.0.1:{port}"}}, **(extra or {})))
    wait_until(lambda: _answers(port), 20, "the exporter to answer")
    d.metrics_port = port
    return d


def _answers(port: int) -> bool:
    try:
        return "supervisor_fastapi_up" in scrape(port)
    except OSError:
        return False


def requests_total(d) -> float:
    return value(parse(scrape(d.metrics_port)), "supervisor_fastapi_http_requests_total")


def test_requests_kill_and_memory_recycle_are_counted(deploy, tmp_path):
    d = metrics_deploy(deploy, {"memory": {"limit": "120MB", "check_interval": 1.0, "limit_checks": 2},
                                "alerts": [{"type": "log", "path": str(tmp_path / "alerts.log")}]})
    first = parse(scrape(d.metrics_port))
    assert value(first, "supervisor_fastapi_up") == 1
    assert value(first, "supervisor_fastapi_worker_up") == 2
    for process in ("web_00", "web_01"):
        assert value(first, "supervisor_fastapi_worker_rss_bytes", process=process) > 10 * 2**20
        assert abs(value(first, "supervisor_fastapi_worker_start_time_seconds", process=process) - time.time()) < 120
        for cause in ("killed", "crashed", "start_failed", "memory", "hung", "rolled"):
            assert ("supervisor_fastapi_restarts_total",
                    (("app", "web"), ("cause", cause), ("process", process))) in first

    # N requests add exactly N (counted in the workers, written on their next beat).
    before = requests_total(d)
    n = 37
    for _ in range(n):
        assert d.get("/")[0] == 200
    wait_until(lambda: requests_total(d) >= before + n, 10, f"{n} more requests counted")
    time.sleep(1.5)  # a beat later: nothing counted twice
    after = parse(scrape(d.metrics_port))
    assert value(after, "supervisor_fastapi_http_requests_total") == before + n
    assert value(after, "supervisor_fastapi_http_requests_total", method="GET", status_class="2xx") >= n
    assert value(after, "supervisor_fastapi_http_request_duration_seconds_count") == before + n

    # kill -9 of a ready worker: exactly +1 killed for it, nothing else; its counters carry on.
    victim = next(i for i in d.infos() if i["name"] == "web_00")
    served = value(after, "supervisor_fastapi_http_requests_total", process="web_00")
    os.kill(victim["pid"], signal.SIGKILL)
    wait_until(lambda: (p := ready_pids(d)) and len(p) == 2 and victim["pid"] not in p, 30, "web_00 replaced")
    killed = parse(scrape(d.metrics_port))
    assert value(killed, "supervisor_fastapi_restarts_total", process="web_00", cause="killed") == 1
    assert value(killed, "supervisor_fastapi_restarts_total") == 1
    assert value(killed, "supervisor_fastapi_http_requests_total", process="web_00") >= served
    assert value(killed, "supervisor_fastapi_worker_up") == 2

    # A memory recycle: +1 memory for the fat worker, the kill count unchanged.
    status, body = d.get("/grow?mb=150")
    assert status == 200
    fat = next(i["name"] for i in d.infos() if i["pid"] == body["pid"])
    recycled = wait_until(lambda: (s := parse(scrape(d.metrics_port))) and value(
        s, "supervisor_fastapi_restarts_total", process=fat, cause="memory") >= 1 and s, 30, "the memory recycle")
    assert value(recycled, "supervisor_fastapi_restarts_total", process=fat, cause="memory") == 1
    assert value(recycled, "supervisor_fastapi_restarts_total", cause="killed") == 1
    assert value(recycled, "supervisor_fastapi_restarts_total") == 2
    # Its memory_recycle alert went out through the log channel: counted by the listener.
    wait_until(lambda: value(parse(scrape(d.metrics_port)), "supervisor_fastapi_alerts_total", result="sent") >= 1,
               15, "the memory_recycle alert counted as sent")
    final = parse(scrape(d.metrics_port))
    assert value(final, "supervisor_fastapi_alerts_total", result="failed") == 0


@pytest.mark.skipif(not (shutil.which("prometheus") and shutil.which("promtool")),
                    reason="needs Debian's prometheus package (prometheus, promtool)")
def test_prometheus_scrapes_the_exporter_and_loads_the_documented_rules(deploy, tmp_path):
    d = metrics_deploy(deploy, {"migrate": {"command": "true"}})
    text = scrape(d.metrics_port)
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    rules = subprocess.run(["promtool", "check", "rules", RULES], capture_output=True, text=True, timeout=30)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert value(parse(text), "supervisor_fastapi_migration_gate_open") == 1
    assert value(parse(text), "supervisor_fastapi_migration_last_success") == 1

    web = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: supervisor-fastapi\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{d.metrics_port}']\n")
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{web}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        def query(q: str):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", web, timeout=5)
                conn.request("GET", "/api/v1/query?" + urllib.parse.urlencode({"query": q}))
                data = json.loads(conn.getresponse().read())
                conn.close()
            except (OSError, ValueError):
                return None
            return data["data"]["result"] if data.get("status") == "success" else None

        found = wait_until(lambda: query("supervisor_fastapi_worker_up == 1"), 30, "Prometheus to scrape the workers")
        assert sorted(r["metric"]["process"] for r in found) == ["web_00", "web_01"]
        assert query('up{job="supervisor-fastapi"}')[0]["value"][1] == "1"
        for family in ("supervisor_fastapi_worker_rss_bytes", "supervisor_fastapi_worker_start_time_seconds",
                       "supervisor_fastapi_restarts_total", "supervisor_fastapi_held",
                       "supervisor_fastapi_migration_gate_open", "supervisor_fastapi_http_requests_total",
                       "supervisor_fastapi_http_request_duration_seconds_bucket"):
            assert query(family), family
        conn = http.client.HTTPConnection("127.0.0.1", web, timeout=5)
        conn.request("GET", "/api/v1/rules")
        groups = json.loads(conn.getresponse().read())["data"]["groups"]
        conn.close()
        rules_seen = [r for g in groups for r in g["rules"]]
        assert rules_seen and all(r["health"] in ("ok", "unknown") for r in rules_seen), rules_seen
        # Nothing is wrong with this deployment: no documented alert fires.
        wait_until(lambda: all(r.get("lastEvaluation", "").startswith("2") and r["health"] == "ok"
                               for r in _rules(web)), 15, "every rule evaluated")
        assert not [r["name"] for r in _rules(web) if r["state"] != "inactive"]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _rules(port: int):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/api/v1/rules")
    groups = json.loads(conn.getresponse().read())["data"]["groups"]
    conn.close()
    return [r for g in groups for r in g["rules"]]


def test_status_watch_refreshes_with_request_rates_and_ctrl_c_exits_0(deploy):
    import sys

    d = metrics_deploy(deploy)
    r = d.cli("status", "--watch", "--interval", "0.5", "--count", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("supervisor-fastapi status --watch") == 2
    assert "web:web_00" in r.stdout and "requests/s: web_00" in r.stdout.split("--watch")[-1]
    proc = subprocess.Popen([sys.executable, "-m", "supervisor_fastapi", "status", "--watch", "--interval", "0.5",
                             "-c", d.spec_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import select

        ready, _, _ = select.select([proc.stdout], [], [], 30)  # the first frame is on its way
        assert ready, "no frame within 30 s"
        first = proc.stdout.readline()
        assert first.startswith("supervisor-fastapi status --watch")
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)  # Ctrl-C while it waits for the next frame
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "web:web_01" in out


def test_a_rolling_restart_counts_rolled_and_a_hung_worker_counts_hung_not_killed(deploy):
    import threading

    d = metrics_deploy(deploy, {"server": {"heartbeat_timeout": 2}})
    r = d.cli("restart")
    assert r.returncode == 0, r.stdout + r.stderr
    rolled = parse(scrape(d.metrics_port))
    assert value(rolled, "supervisor_fastapi_restarts_total", cause="rolled") == 2
    assert value(rolled, "supervisor_fastapi_restarts_total") == 2  # the stops are not kills or crashes

    def block():
        try:
            d.get("/block?s=30", timeout=40)
        except OSError:
            pass  # the watchdog kills the worker under this request

    threading.Thread(target=block, daemon=True).start()
    hung = wait_until(lambda: (s := parse(scrape(d.metrics_port))) and value(
        s, "supervisor_fastapi_restarts_total", cause="hung") >= 1 and s, 30, "the hung worker killed")
    assert value(hung, "supervisor_fastapi_restarts_total", cause="hung") == 1
    assert value(hung, "supervisor_fastapi_restarts_total", cause="killed") == 0
    wait_until(lambda: value(parse(scrape(d.metrics_port)), "supervisor_fastapi_worker_up") == 2, 30,
               "both workers ready again")


def test_a_crash_loop_shows_as_held_with_its_retry_time_and_crashes_counted(deploy, tmp_path):
    flag = tmp_path / "broken"
    flag.write_text("")
    port = free_port()
    deploy({"server": {"workers": 1}, "metrics": {"bind": f"127.0.0.1:{port}"},
                "app": {"env": {"CRASH_AFTER": "1", "CRASH_WHILE": str(flag)}},
                "crash_loop": {"restarts": 3, "window": 30, "backoff_initial": 5, "backoff_max": 20,
                               "backoff_reset": 3, "jitter": 0}}, wait=False)
    wait_until(lambda: _answers(port), 20, "the exporter to answer")
    held = wait_until(lambda: (s := parse(scrape(port))) and value(s, "supervisor_fastapi_held",
                                                                   process="web_00") == 1 and s, 30, "the hold")
    assert value(held, "supervisor_fastapi_restarts_total", process="web_00", cause="crashed") == 3
    retry = value(held, "supervisor_fastapi_held_until_seconds", process="web_00")
    assert time.time() < retry <= time.time() + 5.5
    assert value(held, "supervisor_fastapi_worker_up") == 0
    flag.unlink()  # the fix: the next retry survives and the hold ends
    wait_until(lambda: value(parse(scrape(port)), "supervisor_fastapi_worker_up") == 1, 30, "the worker back")
    back = parse(scrape(port))
    assert value(back, "supervisor_fastapi_held", process="web_00") == 0
    assert ("supervisor_fastapi_held_until_seconds", (("app", "web"), ("process", "web_00"))) not in back


def test_a_metrics_port_in_use_fails_check_and_up_instead_of_a_silent_crash_loop(deploy):
    """Found by a new user: with 127.0.0.1:9150 taken, `check` said nothing and `up` exited 0
    while the exporter crash-looped (status then showed it DOWN)."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", free_port()))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        d = deploy({"metrics": {"bind": f"127.0.0.1:{port}"}}, start=False)
        r = d.cli("check")
        assert r.returncode == 1, r.stdout + r.stderr
        line = next(x for x in r.stdout.splitlines() if "metrics bind" in x)
        assert line.startswith("FAIL") and f"127.0.0.1:{port} is already in use" in line \
            and "change [metrics] bind" in line, line
        r = d.cli("up", timeout=180)
        # The workers serve; `up` says the exporter does not, with its log's own reason.
        assert r.returncode == 1, r.stdout + r.stderr
        assert "web_metrics:web_metrics is not serving (the metrics exporter)" in r.stderr, r.stderr
        assert "Address already in use" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert d.get("/")[0] == 200
    finally:
        busy.close()
