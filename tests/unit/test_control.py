"""readiness(): pure decisions over getAllProcessInfo records and worker state files."""

from supervisor_fastapi.cli.control import readiness
from supervisor_fastapi.spec import HostDefaults, build_spec


def spec_with_migrate():
    data = {"app": {"name": "web", "asgi": "m:app"}, "server": {"workers": 2},
            "migrate": {"command": "alembic upgrade head"}}
    return build_spec(data, "/srv/s.toml", "/srv", HostDefaults(python="/usr/bin/python3", cpu_count=2))


def info(name, group, state, pid=0, exitstatus=0, start=0):
    return {"name": name, "group": group, "statename": state, "pid": pid, "exitstatus": exitstatus,
            "start": start, "spawnerr": ""}


def test_running_migration_is_reported_and_blocks_done():
    r = readiness(spec_with_migrate(), [info("web_migrate", "web_migrate", "RUNNING", pid=5),
                                        info("web_00", "web", "STOPPED"), info("web_01", "web", "STOPPED")], {})
    assert r.migrating == "web_migrate"
    assert r.pending == ["web_00", "web_01"] and not r.failed and not r.done


def test_worker_is_ready_only_when_its_state_file_names_the_running_pid():
    infos = [info("web_migrate", "web_migrate", "EXITED", start=1), info("web_00", "web", "RUNNING", pid=10),
             info("web_01", "web", "RUNNING", pid=11)]
    r = readiness(spec_with_migrate(), infos, {"web_00": {"pid": 10}, "web_01": {"pid": 99}})
    assert r.ready == ["web_00"] and r.pending == ["web_01"] and r.migrating is None


def test_failed_migration_fails_the_deployment_with_its_status():
    r = readiness(spec_with_migrate(), [info("web_migrate", "web_migrate", "EXITED", exitstatus=3, start=1)], {})
    assert r.failed == ["web_migrate"] and "status 3" in r.reasons["web_migrate"]


def test_an_answer_that_is_not_http_is_one_deploy_error_and_a_fresh_connection_next():
    # What a client saw during `reload` before the waker fix: a byte in front of the status
    # line. The CLI says so in one line (exit 1) instead of a BadStatusLine traceback.
    import socket
    import threading

    import pytest

    from supervisor_fastapi.cli.control import answer_problem, proxy
    from supervisor_fastapi.errors import DeployError

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    body = b"<?xml version='1.0'?><methodResponse><params><param><value><string>RUNNING</string></value>" \
           b"</param></params></methodResponse>"
    answers = [b"\x00HTTP/1.1 200 OK\r\n\r\n", b"\x00HTTP/1.1 200 OK\r\n\r\n",
               b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)]
    connections = []

    def serve():
        for answer in answers:
            conn, _ = server.accept()
            connections.append(conn)
            conn.recv(65536)
            conn.sendall(answer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        p = proxy(f"http://127.0.0.1:{port}", timeout=5)
        with pytest.raises(DeployError, match="did not give an HTTP answer.*BadStatusLine"):
            p.supervisor.getState()
        assert "did not give an HTTP answer" in (answer_problem(p) or "")  # a wait loop: not answering
        assert p.supervisor.getState() == "RUNNING"  # on a new connection
        t.join(5)
        assert len(connections) == 3
    finally:
        for c in connections:
            c.close()
        server.close()
