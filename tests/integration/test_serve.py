"""The core promise: supervisord from a generated conf serves the app from N workers."""


from .conftest import wait_until


def test_workers_share_one_socket_and_all_answer(deploy):
    d = deploy({"server": {"workers": 3}})
    pids = set()

    def three_pids():
        status, body = d.get("/")
        assert status == 200
        pids.add(body["pid"])
        return len(pids) == 3

    wait_until(three_pids, 20, "three distinct worker pids to answer")
    web = [i for i in d.infos() if i["group"] == "web"]
    assert sorted(i["name"] for i in web) == ["web_00", "web_01", "web_02"]
    assert pids == {i["pid"] for i in web}


def test_supervisorctl_status_works_on_the_generated_conf(deploy):
    d = deploy()
    out = d.ctl("status")
    assert "web:web_00" in out.stdout and "RUNNING" in out.stdout, out.stdout
