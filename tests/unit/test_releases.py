"""Release mode's pure parts: ids, which release is previous, pruning, the record reader, the
spec's [release] table, the conf it renders and the migration program's skip (issue 17)."""

import json
import os
import sys
import tarfile

import pytest

from supervisor_fastapi.cli import releases
from supervisor_fastapi.contracts.files import migration_succeeded, read_release_record
from supervisor_fastapi.errors import SpecError, UserError
from supervisor_fastapi.generate.conf import render
from supervisor_fastapi.layout import Releases
from supervisor_fastapi.runtime import release_migrate
from supervisor_fastapi.spec import parse_spec

BASE = '[app]\nname = "shop"\nasgi = "app:app"\ndirectory = "/srv/shop"\n[migrate]\ncommand = "alembic upgrade head"\n'


def test_release_ids_sort_by_time_and_never_collide():
    now = 1796400000.0  # 2026-12-04 ...
    first = releases.new_release_id(now, [])
    assert len(first) == 14 and first.isdigit()
    assert releases.new_release_id(now, [first]) == first + "-2"
    assert releases.new_release_id(now, [first, first + "-2"]) == first + "-3"


def test_previous_is_the_last_other_release_that_served_and_still_exists():
    assert releases.previous_release(["r1", "r2", "r3"], "r3", ["r1", "r2", "r3"]) == "r2"
    assert releases.previous_release(["r1", "r2", "r3"], "r3", ["r1", "r3"]) == "r1"
    assert releases.previous_release(["r1", "r2", "r1"], "r1", ["r1", "r2"]) == "r2"  # after a rollback
    assert releases.previous_release(["r1"], "r1", ["r1"]) is None


def test_pruning_keeps_the_newest_old_ones_and_never_current_or_previous():
    ids = ["a", "b", "c", "d", "e", "f"]
    assert releases.to_prune(ids, "f", "e", 2) == ["a", "b"]
    assert releases.to_prune(ids, "b", "a", 2) == ["c", "d"]  # rolled back to b: a and b stay
    assert releases.to_prune(ids, "f", "e", 0) == ["a", "b", "c", "d"]
    assert releases.to_prune(ids, "f", "e", 10) == []


def test_the_record_reader_keeps_only_well_formed_entries(tmp_path):
    path = tmp_path / "releases.json"
    path.write_text(json.dumps({"releases": {"r1": {"migration": "ok", "nested": {"x": 1}}, "../x": {"migration": "ok"},
                                             "r2": "not a table"}, "history": ["r1", "../x", 3]}))
    record = read_release_record(str(path))
    assert record == {"releases": {"r1": {"migration": "ok"}}, "history": ["r1"]}
    assert migration_succeeded(record, "r1") and not migration_succeeded(record, "r2")
    link = tmp_path / "link.json"
    link.symlink_to(path)
    assert read_release_record(str(link)) == {"releases": {}, "history": []}  # never follows a link
    path.write_text("[1, 2]")
    assert read_release_record(str(path)) == {"releases": {}, "history": []}


def test_spec_release_table_and_its_errors():
    spec = parse_spec(BASE + '[release]\nshared = ["data", ".env"]\nbuild = "make venv"\n', "/x/s.toml", "/x")
    assert spec.release.keep == 5 and spec.release.shared == ("data", ".env") and spec.release.build == "make venv"
    assert spec.workdir == "/srv/shop/current"
    assert parse_spec(BASE, "/x/s.toml", "/x").workdir == "/srv/shop"
    for bad, message in [('shared = ["../up"]', "release.shared[0]: '../up' is not a relative path"),
                         ('shared = ["/etc"]', "release.shared[0]"), ('keep = -1', "release.keep"),
                         ('kept = 3', "release.kept: unknown key; did you mean 'keep'")]:
        with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_spec(BASE + "[release]\n" + bad + "\n", "/x/s.toml", "/x")


def test_release_mode_conf_runs_every_program_through_current_and_wraps_the_migration():
    spec = parse_spec(BASE + "[release]\n", "/x/s.toml", "/x")
    text = render(spec, "x")
    assert text.count("directory=/srv/shop/current") == 2  # the migration and the web workers
    assert "supervisor_fastapi.runtime.release_migrate --record /x/run/releases.json --releases " \
           "/srv/shop/releases -- alembic upgrade head" in text
    assert "current=/srv/shop/current" in text  # the controller knows which release a worker runs
    in_place = render(parse_spec(BASE, "/x/s.toml", "/x"), "x")
    assert "release_migrate" not in in_place and "command=alembic upgrade head" in in_place


def test_the_migration_program_skips_a_release_whose_migration_succeeded(tmp_path, capsys, monkeypatch):
    rel = Releases(str(tmp_path / "srv"))
    for rid in ("r1", "r2"):
        os.makedirs(rel.release(rid))
    record = tmp_path / "releases.json"
    record.write_text(json.dumps({"releases": {"r1": {"migration": "ok"}, "r2": {"migration": "failed"}}}))
    os.symlink(rel.link_target("r1"), rel.current)
    monkeypatch.chdir(rel.current)
    ran = []
    monkeypatch.setattr(os, "execvp", lambda file, argv: ran.append(argv))
    args = ["--record", str(record), "--releases", rel.releases_dir, "--", "alembic", "upgrade", "head"]
    assert release_migrate.main(args) == 0 and ran == []
    assert "release r1: its migration already succeeded" in capsys.readouterr().out
    monkeypatch.chdir(rel.release("r2"))
    release_migrate.main(args)
    assert ran == [["alembic", "upgrade", "head"]]


def test_an_archive_with_a_path_outside_the_release_is_refused(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    payload = tmp_path / "f"
    payload.write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(str(payload), arcname="../escape")
    with pytest.raises(UserError, match="points outside the release"):
        releases.unpack(str(evil), str(tmp_path / "dest"))
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tar:
        tar.add(str(payload), arcname="app-1/app.py")
    releases.unpack(str(good), str(tmp_path / "dest2"))
    assert os.listdir(tmp_path / "dest2") == ["app.py"]  # the single top folder is stripped


def test_deploy_rollback_and_releases_refuse_an_in_place_spec(tmp_path):
    spec = parse_spec(BASE, str(tmp_path / "s.toml"), str(tmp_path))
    for call in (lambda: releases.deploy_release(spec, "c", "x", str(tmp_path), print),
                 lambda: releases.rollback(spec, "c", "x", print), lambda: releases.list_releases(spec)):
        with pytest.raises(UserError, match=r"needs release mode: add a \[release\] table"):
            call()


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("Linux only")


def test_rollback_refuses_a_release_whose_migration_did_not_succeed(tmp_path):
    """No worker may serve a release whose migration failed or never ran: rollback wants --migrate."""
    root, run = tmp_path / "srv", tmp_path / "run"
    spec = parse_spec(BASE.replace('"/srv/shop"', f'"{root}"') + f'[release]\n[supervisord]\nrun_dir = "{run}"\n',
                      str(tmp_path / "s.toml"), str(tmp_path))
    rel = Releases(str(root))
    for rid in ("r1", "r2", "r3"):
        os.makedirs(rel.release(rid))
    os.makedirs(run)
    (run / "releases.json").write_text(json.dumps({
        "releases": {"r1": {"migration": "failed"}, "r2": {}, "r3": {"migration": "ok"}}, "history": ["r1", "r3"]}))
    os.symlink(rel.link_target("r3"), rel.current)
    with pytest.raises(UserError, match=r"release r1's migration has not succeeded \(failed\).*--migrate"):
        releases.rollback(spec, "c", "x", print)  # the previous one
    with pytest.raises(UserError, match=r"release r2's migration has not succeeded \(never ran\)"):
        releases.rollback(spec, "c", "x", print, "r2")
    with pytest.raises(UserError, match="release r3 is current already"):
        releases.rollback(spec, "c", "x", print, "r3")
    with pytest.raises(UserError, match="no release 'r9'"):
        releases.rollback(spec, "c", "x", print, "r9")
    assert os.readlink(rel.current) == rel.link_target("r3")  # nothing switched
    rows = releases.list_releases(spec)
    assert [(r.id, r.migration, r.current, r.previous) for r in rows if r.id == "r3"] == [("r3", "ok", True, False)]
    assert "* r3" in releases.format_releases(rows)


def test_a_failed_rerun_does_not_erase_a_release_s_own_successful_migration(tmp_path, monkeypatch):
    root, run = tmp_path / "srv", tmp_path / "run"
    spec = parse_spec(BASE.replace('"/srv/shop"', f'"{root}"') + f'[release]\n[supervisord]\nrun_dir = "{run}"\n',
                      str(tmp_path / "s.toml"), str(tmp_path))
    rel = Releases(str(root))
    os.makedirs(rel.release("r1"))
    os.makedirs(run / "logs")
    record = {"releases": {"r1": {"migration": "ok"}}, "history": ["r1"]}
    monkeypatch.setattr(releases, "run_migration", lambda *args: (255, "FAILED: Can't locate revision"))
    with pytest.raises(UserError, match="release r1: its migration exited with status 255"):
        releases._migrate_or_fail(spec, rel, record, "r1", print)
    assert record["releases"]["r1"]["migration"] == "ok" and record["releases"]["r1"]["rerun"] == "failed"
    assert migration_succeeded(read_release_record(str(run / "releases.json")), "r1")
