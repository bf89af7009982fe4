"""What a user gets from ``pip install``: a wheel built from the tracked files, installed into a
fresh virtual environment without ``-e``, run from outside the repository.

The rest of the suite imports the package as ``scripts/test`` installs it; this test proves that
the wheel alone (its modules, templates and static files) is a working server and CLI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import NAMESPACE, free_port

from cloudsession.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return subprocess.run(cmd, cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(the wheel, the fresh environment's bin directory)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    # Exactly what a clean clone holds: the tracked files.
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", ".", "-w", str(base / "dist")], cwd=source)
    assert built.returncode == 0, built.stderr
    [wheel] = (base / "dist").glob("cloudsession-*.whl")
    env_dir = base / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    # No -e: the package is copied into the environment's site-packages.
    done = _run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)], cwd=base)
    assert done.returncode == 0, done.stderr
    yield wheel, bin_dir


def test_the_wheel_holds_every_module_template_and_static_file(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(["git", "ls-files", "cloudsession", "templates"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    expected = {name if name.startswith("cloudsession/") else "cloudsession/" + name for name in tracked}
    assert sorted(expected - names) == []


def test_the_installed_package_is_not_the_checkout(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, bin_dir = installed
    where = _run([str(bin_dir / "python"), "-c", "import cloudsession; print(cloudsession.__file__)"], cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert str(bin_dir.parent) in where.stdout and str(ROOT) not in where.stdout


def _command_paths() -> list[list[str]]:
    """Every command and subcommand the CLI defines, as argument lists."""
    paths: list[list[str]] = []

    def walk(parser: object, prefix: list[str]) -> None:
        for action in getattr(parser, "_actions", []):
            choices = getattr(action, "choices", None)
            if isinstance(choices, dict):
                for name, sub in choices.items():
                    paths.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(build_parser(), [])
    return paths


def test_version_and_help_of_every_command(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, bin_dir = installed
    version = _run([str(bin_dir / "cloudsession"), "--version"], cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("cloudsession "), version.stderr
    module = _run([str(bin_dir / "python"), "-m", "cloudsession", "--version"], cwd=tmp_path)
    assert module.returncode == 0 and module.stdout == version.stdout, module.stderr
    paths = _command_paths()
    assert {"serve", "check-config", "import", "export", "admin", "gc", "push"} <= {p[0] for p in paths}
    for path in [[], *paths]:
        shown = _run([str(bin_dir / "cloudsession"), *path, "--help"], cwd=tmp_path)
        assert shown.returncode == 0 and shown.stdout.startswith("usage: cloudsession"), (path, shown.stderr)
        assert "Traceback" not in shown.stderr


def _call(url: str, data: object | None = None) -> tuple[int, str]:
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.status, resp.read().decode()


def test_serve_answers_and_renders_a_share_page(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, bin_dir = installed
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(bin_dir / "cloudsession"), "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path / "data")]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "CLOUDSESSION_"))}
    env = {**clean, "SESSIONS_SHARED_SECRET": NAMESPACE, "PUBLIC_URL": url}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(200):
            try:
                status, _body = _call(url + "/healthz")
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                subprocess.run(["sleep", "0.05"])
        assert status == 200
        _, created = _call(url + "/api/share", {"sessionID": "ses_wheel0000000000000000000001"})
        share = json.loads(created)
        session = {"id": "ses_wheel0000000000000000000001", "title": "Installed from a wheel", "time": {"created": 1, "updated": 2}}
        status, _ = _call(f"{url}/api/share/{share['id']}/sync", {"secret": share["secret"], "data": [{"type": "session", "data": session}]})
        assert status == 200
        status, page = _call(f"{url}/share/{share['id']}")
        assert status == 200 and "Installed from a wheel" in page
        # The stylesheets and scripts the page links are served from the installed package.
        assets = set(re.findall(r'(?:href|src)="(/static/[^"]+)"', page))
        assert len(assets) >= 2
        for asset in assets:
            assert _call(url + asset.replace("&amp;", "&"))[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
