"""Run the real opencode CLI (npm ``opencode-ai``, installed in tests/node) in a throwaway sandbox.

Finding the binary: the ``opencode-ai`` package ships ``bin/opencode.exe`` as a shell script that
only prints "postinstall script was not run"; its postinstall hard-links the platform package's
binary (``opencode-<os>-<arch>[-baseline][-musl]/bin/opencode``, an optional dependency) over it.
We run the platform binary directly, chosen the way the postinstall chooses it, so the tests work
whether or not npm ran install scripts (``--ignore-scripts``, npm's script allow-lists).

The sandbox: HOME and the four XDG directories point into a temporary directory, so the CLI's
database, config and logs never touch the machine's. Network: the environment switches off the
models.dev fetch, autoupdate, LSP downloads and sharing; loading any config directory also starts
a background ``npm install @opencode-ai/plugin``, which we pin to npm's offline mode and a closed
loopback registry, so nothing leaves the machine and nothing waits on the internet.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

NODE_MODULES = Path(__file__).resolve().parent / "node" / "node_modules"
VERSION = "1.18.33"
TIMEOUT = 120

SANDBOX_ENV = {
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_MODELS_FETCH": "1",
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
    "OPENCODE_DISABLE_SHARE": "1",
    "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
    "npm_config_offline": "true",
    "npm_config_registry": "http://127.0.0.1:9/",
    "NO_COLOR": "1",
}


def _has_avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _is_musl() -> bool:
    return Path("/etc/alpine-release").exists() or "musl" in (platform.libc_ver()[0] or "").lower()


def candidates() -> list[Path]:
    """Platform packages in the order opencode-ai's postinstall tries them."""
    system = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system(), platform.system().lower())
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower(), platform.machine())
    base = f"opencode-{system}-{arch}"
    if arch != "x64":
        names = [base, f"{base}-musl"]
    else:
        fast = [base, f"{base}-baseline"]
        names = fast if _has_avx2() else fast[::-1]
        names += [f"{n}-musl" for n in names]
        if _is_musl():
            names = names[2:] + names[:2]
    return [NODE_MODULES / name / "bin" / "opencode" for name in names]


def binary() -> Path:
    """The opencode executable for this machine; fails with the fix when it is missing."""
    for path in candidates():
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise RuntimeError(f"opencode CLI not found under {NODE_MODULES}; run `npm install` in tests/node (scripts/test does)")


class Sandbox:
    """One throwaway opencode installation: its own HOME, XDG dirs and working directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.workdir = root / "project"
        dirs = {"HOME": "home", "XDG_CONFIG_HOME": "config", "XDG_DATA_HOME": "data", "XDG_CACHE_HOME": "cache", "XDG_STATE_HOME": "state"}
        self.env = {key: value for key, value in os.environ.items() if not key.startswith(("OPENCODE", "npm_config_"))}
        for key, name in dirs.items():
            (root / name).mkdir(parents=True, exist_ok=True)
            self.env[key] = str(root / name)
        self.env.update(SANDBOX_ENV)
        # opencode takes its working directory from PWD when set: the caller's would put sessions
        # (and the bash tool) in the caller's directory instead of the sandbox's project.
        self.env["PWD"] = str(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary()), *args], cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL
        )

    def import_(self, source: str) -> subprocess.CompletedProcess[str]:
        """``opencode import <url or file>``."""
        return self.run("import", source)

    def export(self, session_id: str) -> dict[str, Any]:
        """``opencode export <id>`` parsed (it prints a progress line on stderr, JSON on stdout)."""
        done = self.run("export", session_id)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)
