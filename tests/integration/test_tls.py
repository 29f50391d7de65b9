"""Workers serving HTTPS themselves, with an encrypted key whose password comes from the environment."""

import http.client
import json
import ssl

from ..helpers_alerts import self_signed_cert
from .conftest import wait_until

PASSWORD_VAR = "SF_TEST_TLS_KEY_PASSWORD"


def encrypted_cert(folder: str, password: str):
    cert, key = self_signed_cert(folder, password)
    with open(key) as f:
        assert "ENCRYPTED" in f.read()
    return cert, key


def tls_spec(cert: str, key: str, workers: int = 2) -> dict:
    return {"server": {"workers": workers, "uvicorn": {"ssl_certfile": cert, "ssl_keyfile": key,
                                                       "ssl_keyfile_password_env": PASSWORD_VAR}}}


def test_https_with_an_encrypted_key_from_the_environment(deploy, tmp_path, monkeypatch):
    cert, key = encrypted_cert(str(tmp_path), "pw with spaces & $igns")
    monkeypatch.setenv(PASSWORD_VAR, "pw with spaces & $igns")  # supervisord, and so the workers, inherit it
    d = deploy(tls_spec(cert, key))
    context = ssl.create_default_context(cafile=cert)
    pids = set()

    def https_get() -> bool:
        conn = http.client.HTTPSConnection("127.0.0.1", d.port, timeout=10, context=context)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            assert resp.status == 200
            pids.add(json.loads(resp.read())["pid"])
        finally:
            conn.close()
        return len(pids) == 2

    # The kernel hands each new connection to whichever worker accepts first: ask until both answered.
    wait_until(https_get, 20, "both workers to answer over HTTPS")
    with open(d.conf_path) as f:
        assert "pw with spaces" not in f.read(), "the password must not be in the conf"


def test_a_missing_password_variable_is_named_in_the_worker_log(deploy, tmp_path, monkeypatch):
    cert, key = encrypted_cert(str(tmp_path), "secret")
    monkeypatch.delenv(PASSWORD_VAR, raising=False)
    d = deploy(tls_spec(cert, key, workers=1), wait=False)
    wait_until(lambda: d.state_of("web_00") in ("BACKOFF", "FATAL"), 30, "the worker to fail to start")
    text = wait_until(lambda: PASSWORD_VAR in d.log("web_00") and d.log("web_00"), 10, "the message in its log")
    assert f"ssl_keyfile_password_env names {PASSWORD_VAR}, which is not set" in text, text[-2000:]
    assert "Traceback" not in text

