"""docs/ and README: examples that must agree with what they show."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def test_the_guides_replication_example_shows_as_many_workers_as_it_configures():
    guide = read("docs", "guide.md")
    section = guide[guide.index("## Replication"):guide.index("## Memory")]
    workers = int(re.search(r"^workers = (\d+)$", section, re.M).group(1))
    shown = re.findall(r"^shop:shop_(\d\d) +RUNNING", section, re.M)
    assert shown == [f"{n:02d}" for n in range(workers)]


def index_installs(text: str):
    """Every argument of a `pip install` command that names a distribution, not a path or a file."""
    for m in re.finditer(r"pip3? install ([^\n`&;|]*)", text):
        for arg in m.group(1).split():
            arg = arg.strip("'\"")
            if not arg.startswith("-") and "/" not in arg and not arg.startswith(".") and not arg.endswith(
                    (".whl", ".tar.gz")):
                yield re.split(r"[\[=<>~!]", arg)[0]


def test_no_doc_names_an_install_from_a_package_index_that_does_not_exist():
    # supervisor-fastapi is not published: `pip install supervisor-fastapi` cannot work.
    assert list(index_installs("pip install 'supervisor-fastapi[demo]' && x")) == ["supervisor-fastapi"]
    assert list(index_installs("pip install './supervisor-fastapi[demo]' dist/a.whl fastapi")) == ["fastapi"]
    files = ["README.md"] + [os.path.join("docs", n) for n in sorted(os.listdir(os.path.join(ROOT, "docs")))
                             if n.endswith(".md")]
    files += [os.path.join(d, n) for d, _, names in os.walk(os.path.join(ROOT, "supervisor_fastapi"))
              for n in names if n.endswith(".py")]
    for name in files:
        assert "supervisor-fastapi" not in set(index_installs(read(name))), name


def test_importing_the_fuzz_tests_creates_no_folder(tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    os.mkdir(env["TMPDIR"])
    subprocess.run([sys.executable, "-c", "import tests.unit.test_fuzz"], cwd=ROOT, env=env, check=True, timeout=120)
    assert os.listdir(env["TMPDIR"]) == []


def test_the_plugins_import_with_only_supervisor_and_this_package():
    # They run in the OS supervisord's / supervisorctl's Python (Debian: /usr/bin/python3), where
    # the documented install adds this package alone: no click, uvicorn or tomli-w there.
    import subprocess
    import sys

    code = ("import sys, supervisor_fastapi.plugins.rpc, supervisor_fastapi.plugins.ctl; "
            "print(sorted(m for m in ('click', 'uvicorn', 'tomli_w', 'tomli', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
