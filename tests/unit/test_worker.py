"""worker: the real socket family on fd 0, TCP_NODELAY, and every uvicorn setting reaching uvicorn."""

import json
import os
import socket

import pytest

from supervisor_fastapi.runtime import worker
from supervisor_fastapi.runtime.worker import StateFile, build_server, decode_settings, listening_socket, parse_args
from supervisor_fastapi.uvicorn_settings import UVICORN_SETTINGS, encode_setting


@pytest.mark.parametrize("key, value, words", [
    ("proxy_headers", True, ["--set", "proxy_headers=true"]),
    ("access_log", False, ["--set", "access_log=false"]),
    ("timeout_keep_alive", 5, ["--set", "timeout_keep_alive=5"]),
    ("root_path", "/api", ["--set", "root_path=/api"]),
    ("forwarded_allow_ips", ("a", "b"), ["--set", "forwarded_allow_ips=a", "--set", "forwarded_allow_ips=b"]),
])
def test_encode_setting(key, value, words):
    assert encode_setting(key, value) == words


def test_decode_is_typed_by_the_settings_table():
    words = []
    for key, value in [("proxy_headers", True), ("server_header", False), ("limit_concurrency", 10),
                       ("ws_ping_interval", 1.5), ("root_path", "/x=y"), ("forwarded_allow_ips", ("1.2.3.4", "*")),
                       ("headers", ("X-A: b: c", "Y:z"))]:
        words += encode_setting(key, value)
    args = parse_args(["m:app"] + words)
    assert decode_settings(args.settings) == {
        "proxy_headers": True, "server_header": False, "limit_concurrency": 10, "ws_ping_interval": 1.5,
        "root_path": "/x=y", "forwarded_allow_ips": "1.2.3.4,*", "headers": [("X-A", "b: c"), ("Y", "z")]}


@pytest.mark.parametrize("pair", ["nope=1", "root_path", "port=80"])
def test_decode_refuses_unknown_settings(pair):
    with pytest.raises(worker.WorkerError, match="unknown uvicorn setting"):
        decode_settings([pair])


def test_the_key_password_comes_from_the_named_environment_variable_only():
    words = encode_setting("ssl_keyfile_password_env", "SHOP_TLS_PW")
    assert words == ["--set", "ssl_keyfile_password_env=SHOP_TLS_PW"]  # the name on the command line, not the value
    assert decode_settings(words[1:], env={"SHOP_TLS_PW": "s3cret"}) == {"ssl_keyfile_password": "s3cret"}
    with pytest.raises(worker.WorkerError, match="names SHOP_TLS_PW, which is not set"):
        decode_settings(words[1:], env={})


def test_every_setting_in_the_table_is_a_uvicorn_config_keyword():
    import inspect

    import uvicorn

    params = inspect.signature(uvicorn.Config.__init__).parameters
    # An "env" setting names the variable holding the value of the keyword without "_env".
    keywords = [k[: -len("_env")] if s.kind == "env" else k for k, s in UVICORN_SETTINGS.items()]
    missing = [k for k in keywords if k not in params]
    # Older uvicorn (Python 3.8 resolves to 0.33) lacks a few newer keywords.
    assert set(missing) <= {"ws_max_queue", "ws_per_message_deflate", "h11_max_incomplete_event_size"}, missing


def test_tcp_socket_is_detected_and_gets_nodelay():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        sock = listening_socket(os.dup(listener.fileno()))
        try:
            assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            # Linux: accepted sockets inherit TCP_NODELAY from the listener.
            client = socket.create_connection(listener.getsockname(), timeout=5)
            conn, _ = sock.accept()
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            conn.close()
            client.close()
        finally:
            sock.close()
    finally:
        listener.close()


def test_unix_socket_is_detected(tmp_path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "s.sock"))
    listener.listen()
    try:
        sock = listening_socket(os.dup(listener.fileno()))
        assert sock.family == socket.AF_UNIX
        sock.close()
    finally:
        listener.close()


def test_a_pipe_on_fd_0_is_a_clear_error():
    r, w = os.pipe()
    try:
        with pytest.raises(worker.WorkerError, match=r"not a socket.*never inside \[group:\]"):
            listening_socket(r)
    finally:
        for fd in (r, w):
            try:
                os.close(fd)
            except OSError:
                pass


def test_a_datagram_socket_is_refused():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(worker.WorkerError, match="not a stream socket"):
            listening_socket(os.dup(s.fileno()))
    finally:
        s.close()


def test_state_file_ready_beat_gone(tmp_path):
    state = StateFile(str(tmp_path), "web_00")
    state.ready()
    data = json.loads((tmp_path / "web_00").read_text())
    assert data["pid"] == os.getpid()
    os.utime(tmp_path / "web_00", (1, 1))
    state.beat()
    assert os.stat(tmp_path / "web_00").st_mtime > 1
    state.gone()
    assert not (tmp_path / "web_00").exists()
    state.gone()  # idempotent
    state.beat()  # a beat after removal recreates it
    assert (tmp_path / "web_00").exists()
    StateFile(None, "x").ready()  # no state dir: a no-op


def test_parse_args_defaults():
    args = parse_args(["m:app"])
    assert (args.app, args.factory, args.graceful_timeout, args.backlog, args.fd, args.state_dir) == \
        ("m:app", False, 30.0, 2048, 0, None)


def test_build_server_passes_settings_to_uvicorn_config(monkeypatch, tmp_path):
    monkeypatch.setenv("SUPERVISOR_PROCESS_NAME", "web_03")
    args = parse_args(["m:app", "--factory", "--graceful-timeout", "12", "--backlog", "99", "--state-dir",
                       str(tmp_path), "--set", "root_path=/api", "--set", "server_header=false",
                       "--set", "proxy_headers=true", "--set", "forwarded_allow_ips=10.0.0.1",
                       "--set", "timeout_keep_alive=9", "--set", "log_level=warning"])
    server = build_server(args)
    c = server.config
    assert c.app == "m:app" and c.factory and c.backlog == 99 and c.timeout_graceful_shutdown == 12
    assert c.root_path == "/api" and c.server_header is False and c.proxy_headers is True
    assert c.timeout_keep_alive == 9
    assert "10.0.0.1" in str(c.forwarded_allow_ips)
    assert server.state.path == str(tmp_path / "web_03")


def test_zero_graceful_timeout_means_no_uvicorn_limit(tmp_path):
    server = build_server(parse_args(["m:app", "--graceful-timeout", "0"]))
    assert server.config.timeout_graceful_shutdown is None


def test_worker_imports_only_stdlib_and_uvicorn():
    # It runs under app.python, which need not have click or supervisor installed.
    import ast

    tree = ast.parse(open(worker.__file__).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    assert not names & {"click", "supervisor", "tomli", "tomli_w", "fastapi"}


def test_every_uvicorn_config_keyword_is_offered_owned_or_refused_with_a_reason():
    """Fails when uvicorn adds a Config keyword (decide: offer it, own it or refuse it) or drops one."""
    from supervisor_fastapi.uvicorn_settings import _KINDS, NOT_OFFERED, UVICORN_OWNED, config_keywords

    keywords = set(config_keywords())
    offered = {k[: -len("_env")] if kind == "env" else k for k, kind in _KINDS.items()}
    unplaced = keywords - offered - set(UVICORN_OWNED) - set(NOT_OFFERED)
    assert not unplaced, f"uvicorn.Config keywords nobody decided about: {sorted(unplaced)}"
    # The table offers exactly the installed uvicorn's keywords (older ones lack a few).
    table = {k[: -len("_env")] if s.kind == "env" else k for k, s in UVICORN_SETTINGS.items()}
    assert table == offered & keywords


def test_choices_are_uvicorns_own():
    import uvicorn.config

    assert UVICORN_SETTINGS["http"].choices == tuple(uvicorn.config.HTTP_PROTOCOLS)
    assert UVICORN_SETTINGS["lifespan"].choices == tuple(uvicorn.config.LIFESPAN)
    loops = getattr(uvicorn.config, "LOOP_FACTORIES", None) or uvicorn.config.LOOP_SETUPS
    assert UVICORN_SETTINGS["loop"].choices == tuple(loops)


def test_an_orphan_drains_only_once_a_live_successor_of_its_name_is_ready(tmp_path):
    from supervisor_fastapi.contracts.files import write_worker_state
    from supervisor_fastapi.runtime.worker import StateFile, Succession

    path = str(tmp_path / "web_00")
    parent = [100]
    alive = {4242}
    succession = Succession(path, getppid=lambda: parent[0], alive=lambda pid: pid in alive)
    state = StateFile(str(tmp_path), "web_00", succession)
    state.ready()
    assert not succession.replaced()  # supervisord is alive: nothing to hand over
    write_worker_state(path, 4242, 1.0)
    assert not succession.replaced()  # still our supervisord's (a file it will fix)
    parent[0] = 1  # supervisord killed: we were reparented to init
    assert succession.replaced()
    alive.clear()
    assert not succession.replaced()  # a successor that died is no successor: keep serving
    # An orphan never writes the file again, and never removes a successor's.
    os.unlink(path)
    state.beat()
    assert not os.path.exists(path)
    write_worker_state(path, 4242, 1.0)
    state.gone()
    assert os.path.exists(path)
