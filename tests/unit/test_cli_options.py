"""`-c` before the subcommand works like after it (issue 16, point 8)."""

import os

from click.testing import CliRunner

from supervisor_fastapi.cli.main import main


def spec_file(folder, name: str) -> str:
    path = os.path.join(str(folder), "elsewhere.toml")
    with open(path, "w") as f:
        f.write(f'[app]\nname = "{name}"\nasgi = "main:app"\n[server]\nworkers = 1\n')
    return path


def test_config_before_the_subcommand(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no spec here: only -c can name it
    path = spec_file(tmp_path, "before")
    for argv in (["-c", path, "render", "-o", "-"], ["render", "-c", path, "-o", "-"],
                 ["--config", path, "render", "-o", "-"]):
        out = CliRunner().invoke(main, argv)
        assert out.exit_code == 0, (argv, out.output)
        assert "[fcgi-program:before]" in out.output


def test_config_after_the_subcommand_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = spec_file(tmp_path, "after")
    out = CliRunner().invoke(main, ["-c", str(tmp_path / "missing.toml"), "render", "-c", path, "-o", "-"])
    assert out.exit_code == 0 and "[fcgi-program:after]" in out.output, out.output


def test_init_writes_where_c_before_the_subcommand_says(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(main, ["-c", "shop.toml", "init", "--name", "shop"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "shop.toml").is_file() and not (tmp_path / "supervisor-fastapi.toml").exists()
