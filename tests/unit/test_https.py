"""[https]: the table's rules, the Caddyfile and nginx site generators, and the proxy program in the conf."""

import os

import pytest

from supervisor_fastapi.errors import SpecError, UserError
from supervisor_fastapi.generate import caddy, nginx
from supervisor_fastapi.layout import Layout

from ._core_helpers import conf_of, data, load, make_dirs, raw_sections, spec_of

SITE = {"domains": ["shop.example.com", "www.shop.example.com"]}


def https(run_dir=None, server=None, **table):
    d = data(https={**SITE, **table})
    if server:
        d["server"] = server
    return spec_of(d, run_dir=run_dir)


def err(match, **tables):
    with pytest.raises(SpecError) as info:
        spec_of(data(**tables))
    assert match in str(info.value), str(info.value)
    assert str(info.value).startswith("/srv/app/supervisor-fastapi.toml: ")
    return str(info.value)


# --- the table -----------------------------------------------------------------------------


def test_defaults():
    h = https().https
    assert (h.domains, h.tls, h.cert, h.key, h.email, h.https_port, h.http_port, h.proxy) == (
        ("shop.example.com", "www.shop.example.com"), "auto", None, None, None, 443, 80, "caddy")
    assert spec_of(data()).https is None


def test_tls_files_resolve_against_the_spec_folder_and_nginx_auto_reads_certbots_files():
    h = https(tls={"cert": "tls/cert.pem", "key": "/etc/shop/key.pem"}).https
    assert (h.tls, h.cert, h.key) == ("files", "/srv/app/tls/cert.pem", "/etc/shop/key.pem")
    h = https(proxy="nginx").https
    assert (h.tls, h.cert, h.key) == ("auto", "/etc/letsencrypt/live/shop.example.com/fullchain.pem",
                                      "/etc/letsencrypt/live/shop.example.com/privkey.pem")


@pytest.mark.parametrize("table, where, match", [
    ({}, "https.domains", "is required"),
    ({"domains": []}, "https.domains", "is empty"),
    ({"domains": ["shop.example.com {\n}"]}, "https.domains[0]", "is not a domain name"),
    ({"domains": ["a.com", "b.com;"]}, "https.domains[1]", "is not a domain name"),
    ({"domains": ["a.com", "A.com"]}, "https.domains", "names a domain twice"),
    ({**SITE, "tls": "acme"}, "https.tls", 'must be "auto", "internal"'),
    ({**SITE, "tls": {"cert": "/c.pem"}}, "https.tls.key", "is required"),
    ({**SITE, "tls": {"cert": "/c.pem", "key": "/k.pem", "chain": "x"}}, "https.tls.chain", "unknown key"),
    ({**SITE, "tls": {"cert": "/my certs/c.pem", "key": "/k.pem"}}, "https.tls.cert", "cannot carry"),
    ({**SITE, "tls": {"cert": "/c{x}.pem", "key": "/k.pem"}}, "https.tls.cert", "cannot carry"),
    ({**SITE, "proxy": "nginx", "tls": "internal"}, "https.tls", "Caddy's own certificate authority"),
    ({**SITE, "proxy": "traefik"}, "https.proxy", "must be one of caddy, nginx"),
    ({**SITE, "email": "ops@example.com}"}, "https.email", "is not an email address"),
    ({**SITE, "https_port": 0}, "https.https_port", "between 1 and 65535"),
    ({**SITE, "http_port": 443}, "https.http_port", "is https_port too"),
    ({**SITE, "domain": "x"}, "https.domain", "did you mean 'domains'"),
    ({**SITE, "proxy": "nginx", "supervised": False}, "https.supervised", "is for proxy = \"caddy\""),
])
def test_bad_values_name_the_key(table, where, match):
    message = err(match, https=table)
    assert f": {where}: " in message


def test_the_workers_trust_the_proxy_headers_unless_the_spec_says_otherwise():
    unix = https(server={"bind": "unix:///run/shop/web.sock"})
    assert dict(unix.server.uvicorn) == {"proxy_headers": True, "forwarded_allow_ips": ("*",)}
    tcp = https(server={"bind": "tcp://127.0.0.1:8000"})
    assert dict(tcp.server.uvicorn) == {"proxy_headers": True, "forwarded_allow_ips": ("127.0.0.1",)}
    own = https(server={"bind": "tcp://127.0.0.1:8000", "uvicorn": {"forwarded_allow_ips": "10.0.0.1"}})
    assert dict(own.server.uvicorn)["forwarded_allow_ips"] == ("10.0.0.1",)
    assert dict(spec_of(data()).server.uvicorn) == {}


def test_proxy_is_a_reserved_program_name():
    err("is reserved", programs=[{"name": "proxy", "command": "x"}])


@pytest.mark.parametrize("server, problem", [
    ({"bind": "unix:///run/shop/web.sock"}, None),
    ({"bind": "tcp://127.0.0.1:8000"}, None),
    ({"bind": "unix:///run/shop/web.sock", "uvicorn": {"forwarded_allow_ips": "127.0.0.1"}},
     "server.uvicorn.forwarded_allow_ips = ['127.0.0.1']: a unix-socket peer has no address"),
    ({"bind": "tcp://127.0.0.1:8000", "uvicorn": {"forwarded_allow_ips": ["10.0.0.1"]}}, "leaves out 127.0.0.1"),
    ({"bind": "tcp://127.0.0.1:8000", "uvicorn": {"proxy_headers": False}}, "proxy_headers = false"),
])
def test_check_names_worker_settings_that_would_ignore_the_proxys_headers(server, problem):
    from supervisor_fastapi.cli.https import forwarding_problem

    found = forwarding_problem(https(server=server))
    assert (found is None) if problem is None else (problem in str(found)), found


# --- the Caddyfile ---------------------------------------------------------------------------


def test_caddyfile_runs_unprivileged_on_run_dir_storage_and_proxies_to_the_socket(tmp_path):
    run_dir = str(tmp_path / "run")
    spec = https(run_dir, server={"bind": "unix:///run/shop/web.sock"}, tls="internal", email="ops@example.com",
                 https_port=8443, http_port=8080)
    text = caddy.render(spec, "supervisor-fastapi render")
    assert text.startswith("# Generated by supervisor-fastapi ")
    body = text.split("`supervisor-fastapi render`.\n", 1)[1]
    assert body == (
        "{\n"
        "\tadmin off\n"
        f"\tstorage file_system {run_dir}/proxy/data\n"
        "\tskip_install_trust\n"
        "\thttp_port 8080\n"
        "\temail ops@example.com\n"
        "\tgrace_period 30s\n"
        "}\n"
        "\n"
        "shop.example.com:8443, www.shop.example.com:8443 {\n"
        "\ttls internal\n"
        "\treverse_proxy unix//run/shop/web.sock {\n"
        "\t\tlb_try_duration 10s\n"
        "\t\tlb_try_interval 100ms\n"
        "\t\ttransport http {\n"
        "\t\t\tkeepalive 500ms\n"
        "\t\t}\n"
        "\t}\n"
        "}\n")


def test_the_proxy_closes_idle_connections_to_the_workers_before_a_stopping_worker_does():
    # A stopping worker closes connections idle for its drain window (1 s, at most graceful_timeout).
    assert caddy.upstream_idle_ms(https(server={"graceful_timeout": 30})) == 500
    assert caddy.upstream_idle_ms(https(server={"graceful_timeout": 0.4})) == 200
    tiny = https(server={"graceful_timeout": 0}, proxy="nginx", tls={"cert": "/c", "key": "/k"})
    assert caddy.upstream_idle_ms(tiny) == 0
    assert "keepalive" not in nginx.render(tiny, "x")
    assert "\t\t\tkeepalive off\n" in caddy.render(https(server={"graceful_timeout": 0}), "x")
    assert "    keepalive_timeout 500ms;\n" in nginx.render(https(proxy="nginx"), "x")


def test_caddyfile_tls_files_default_ports_no_plain_http_and_a_tcp_upstream():
    spec = https(server={"bind": "tcp://0.0.0.0:8000"}, tls={"cert": "/c.pem", "key": "/k.pem"}, http_port=0)
    text = caddy.render(spec, "x")
    assert "\tauto_https disable_redirects\n" in text and "http_port" not in text
    assert "shop.example.com, www.shop.example.com {\n\ttls /c.pem /k.pem\n" in text
    assert "\treverse_proxy 127.0.0.1:8000 {\n" in text
    auto = caddy.render(https(), "x")
    assert "\ttls " not in auto and "email" not in auto  # ACME: Caddy's default


def test_caddyfile_quotes_a_space_and_refuses_syntax_in_run_dir():
    spaced = https("/srv/my app/run")
    assert '\tstorage file_system "/srv/my app/run/proxy/data"\n' in caddy.render(spaced, "x")
    with pytest.raises(UserError, match=r"supervisord.run_dir: .* cannot be written into a Caddyfile"):
        caddy.render(https("/srv/a{b}/run"), "x")


def test_snippet_for_an_os_caddy_is_the_site_block_alone():
    spec = https(https_port=8443)
    text = caddy.render_snippet(spec, "x")
    assert "admin" not in text and "storage" not in text
    assert "shop.example.com:8443, www.shop.example.com:8443 {" in text
    assert f"import {caddy.snippet_path(spec)}" in text


# --- the program -----------------------------------------------------------------------------


def test_the_conf_runs_caddy_as_a_program_that_the_controller_watches(tmp_path):
    run_dir = str(tmp_path / "run")
    spec = https(run_dir, tls="internal")
    make_dirs(spec)
    text = conf_of(spec)
    load(text)
    sections = raw_sections(text)
    proxy = sections["program:web_proxy"]
    assert proxy["command"] == "caddy run --config /srv/app/web.Caddyfile --adapter caddyfile"
    assert proxy["directory"] == Layout(run_dir).proxy_dir
    assert f'HOME="{run_dir}/proxy"' in proxy["environment"]
    assert proxy["autorestart"] == "true" and proxy["stopsignal"] == "TERM"
    assert int(proxy["priority"]) > int(sections["fcgi-program:web"]["priority"])  # stops before the workers
    assert sections["rpcinterface:fastapi_web"]["groups"] == "web web_proxy"


def test_a_changed_caddyfile_changes_the_program_so_up_restarts_caddy(tmp_path):
    run_dir = str(tmp_path / "run")
    a = raw_sections(conf_of(https(run_dir, tls="internal")))["program:web_proxy"]
    b = raw_sections(conf_of(https(run_dir, tls="internal", https_port=8443)))["program:web_proxy"]
    assert a["environment"] != b["environment"]
    assert a == raw_sections(conf_of(https(run_dir, tls="internal")))["program:web_proxy"]


def test_no_caddy_program_in_a_fragment_or_a_shared_supervisord_or_with_nginx(tmp_path):
    run_dir = str(tmp_path / "run")
    assert "web_proxy" not in conf_of(https(run_dir), fragment=True)
    shared = spec_of(data(https=SITE, supervisord={"serverurl": "unix:///var/run/supervisor.sock"}),
                     run_dir=run_dir)
    assert "web_proxy" not in conf_of(shared, fragment=True)
    assert "web_proxy" not in conf_of(https(run_dir, proxy="nginx", tls={"cert": "/c", "key": "/k"}))
    os_caddy = https(run_dir, supervised=False)
    assert "web_proxy" not in conf_of(os_caddy)
    from supervisor_fastapi.cli.https import proxy_files

    assert [p for p, _ in proxy_files(os_caddy, "x")] == ["/srv/app/web.caddy"]
    assert [p for p, _ in proxy_files(https(run_dir), "x")] == ["/srv/app/web.Caddyfile"]
    fragment = https(run_dir).supervisord.hosting(fragment=True)
    assert [p for p, _ in proxy_files(https(run_dir), "x", fragment)] == ["/srv/app/web.caddy"]


# --- the nginx site -----------------------------------------------------------------------------


def test_nginx_site():
    spec = https(server={"bind": "unix:///run/shop/web.sock"}, proxy="nginx", https_port=8443, http_port=8080,
                 tls={"cert": "/etc/shop/cert.pem", "key": "/etc/shop/key.pem"})
    text = nginx.render(spec, "supervisor-fastapi render --target nginx")
    assert text.count("    server unix:/run/shop/web.sock max_fails=0;\n") == 2
    for line in ("keepalive 16;", "map $http_upgrade $web_connection {", "listen 8443 ssl;",
                 "server_name shop.example.com www.shop.example.com;", "ssl_certificate     /etc/shop/cert.pem;",
                 "ssl_certificate_key /etc/shop/key.pem;", "proxy_pass http://web_workers;",
                 "proxy_http_version 1.1;", "proxy_set_header Host $http_host;",
                 "proxy_set_header Upgrade $http_upgrade;",
                 "proxy_set_header Connection $web_connection;", "proxy_set_header X-Forwarded-For $remote_addr;",
                 "proxy_set_header X-Forwarded-Proto $scheme;", "proxy_next_upstream error timeout;",
                 "listen 8080;", "return 301 https://$host:8443$request_uri;"):
        assert line in text, line
    plain = nginx.render(https(proxy="nginx", http_port=0, server={"bind": "tcp://0.0.0.0:8000"}), "x")
    assert "return 301" not in plain and "server 127.0.0.1:8000 max_fails=0;" in plain
    assert "ssl_certificate     /etc/letsencrypt/live/shop.example.com/fullchain.pem;" in plain


def test_nginx_site_refuses_syntax_in_the_socket_path():
    spec = https(server={"bind": "unix:///run/a;b/web.sock"}, proxy="nginx")
    with pytest.raises(UserError, match=r"server.bind: .* cannot be written into an nginx site"):
        nginx.render(spec, "x")


def test_docs_spec_md_lists_every_https_key():
    from supervisor_fastapi.spec.load import HTTPS_KEYS

    with open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "spec.md"), encoding="utf-8") as f:
        doc = f.read()
    assert [k for k in HTTPS_KEYS if f"`https.{k}`" not in doc] == []
