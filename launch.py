#!/usr/bin/env python3
"""Easel entry point.

`python3 launch.py` prepares a virtual environment in `.venv/` (first run only, or
when requirements.txt changes), then starts the web UI on http://127.0.0.1:7860.
`python3 launch.py --test [pytest args]` prepares the same environment and runs the
test suite. `python3 launch.py generate ...` runs one generation from the command line.

This file uses only the standard library: it must work before anything is installed.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV_DIR = Path(os.environ.get("EASEL_VENV", ROOT / ".venv"))
REQUIREMENTS = ROOT / "requirements.txt"
REQUIREMENTS_NODEPS = ROOT / "requirements-nodeps.txt"
STAMP = VENV_DIR / ".easel-requirements.sha256"
MIN_PYTHON = (3, 10)


def venv_python() -> Path:
    if os.name == "nt":
        return VENV_DIR / "Scripts" / "python.exe"
    return VENV_DIR / "bin" / "python"


def running_in_venv() -> bool:
    try:
        return Path(sys.prefix).resolve() == VENV_DIR.resolve()
    except OSError:
        return False


def requirements_digest() -> str:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes())
    if REQUIREMENTS_NODEPS.exists():
        digest.update(REQUIREMENTS_NODEPS.read_bytes())
    return digest.hexdigest()


def ensure_venv(force_install: bool = False) -> None:
    """Create .venv and install requirements.txt when missing or changed."""
    if not venv_python().exists():
        print(f"[easel] creating virtual environment in {VENV_DIR}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV_DIR)
    digest = requirements_digest()
    if not force_install and STAMP.exists() and STAMP.read_text().strip() == digest:
        return
    print("[easel] installing requirements.txt (first run takes a few minutes)", flush=True)
    cmd, env = uv_install_command()
    returncode = install_requirements(cmd, env) if cmd else 1
    if returncode != 0:
        if cmd:
            print("[easel] uv could not install the requirements; installing them with pip instead", flush=True)
        cmd = [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check"]
        returncode = install_requirements(cmd, None)
    if returncode != 0:
        sys.exit(f"[easel] installing requirements failed (exit {returncode}); see pip's output above")
    STAMP.write_text(digest + "\n")


def install_requirements(cmd: list[str], env: dict[str, str] | None) -> int:
    """requirements.txt, then requirements-nodeps.txt without dependencies, with `cmd` (pip or uv pip)."""
    result = subprocess.run([*cmd, "-r", str(REQUIREMENTS)], cwd=ROOT, env=env)
    if result.returncode == 0 and REQUIREMENTS_NODEPS.exists():
        result = subprocess.run([*cmd, "--no-deps", "-r", str(REQUIREMENTS_NODEPS)], cwd=ROOT, env=env)
    return result.returncode


# uv installs the same pinned requirements several times faster than pip (parallel downloads and unpacking,
# bytecode compiled on all cores): most of a first run's install is torch's CUDA wheels, ~6 GB unpacked.
# It is one wheel from PyPI, installed into the new venv with pip; EASEL_PIP=1 keeps to pip alone.
UV_VERSION = "0.13.9"


def uv_install_command() -> tuple[list[str] | None, dict[str, str]]:
    """`python -m uv pip install` for the venv and its environment, with pip's own configuration (indexes,
    find-links, constraints, certificates) passed on, so it installs what pip would; None when uv can't be had."""
    env = dict(os.environ)
    if env.get("EASEL_PIP"):
        return None, env
    python = str(venv_python())
    got = subprocess.run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", f"uv=={UV_VERSION}"],
                         cwd=ROOT)
    if got.returncode != 0:
        return None, env
    # bytecode now, as pip does: the test runs set PYTHONDONTWRITEBYTECODE, so nothing would cache it later;
    # unsafe-best-match: pick from every index by version, as pip does (uv's default stops at the first index)
    cmd = [python, "-m", "uv", "pip", "install", "--python", python, "--compile-bytecode",
           "--index-strategy", "unsafe-best-match"]
    listed = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, cwd=ROOT)
    options, cert = pip_config_options(listed.stdout)
    if cert:
        env.setdefault("SSL_CERT_FILE", cert)  # uv's TLS trusts what pip was told to trust
    return cmd + options, env


def pip_config_options(listed: str) -> tuple[list[str], str | None]:
    """uv's options for pip's indexes, find-links and constraints in `pip config list` output, and pip's
    certificate bundle (None if not set)."""
    flags = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
             "constraint": "--constraint"}
    options: list[str] = []
    cert = None
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        name, value = key.rsplit(".", 1)[-1], value.strip().strip("'\"")
        if name in flags:
            for item in value.split():
                if [flags[name], item] not in [options[i:i + 2] for i in range(0, len(options), 2)]:
                    options += [flags[name], item]  # pip lists a setting from its file and from PIP_* too
        elif name == "cert" and value:
            cert = value
    return options, cert


def ensure_test_browser() -> None:
    """Browser tests need Chromium; install Debian's package when we can (root + apt)."""
    if shutil.which("chromium") or os.environ.get("EASEL_CHROMIUM"):
        return
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        print("[easel] installing chromium for the browser tests (apt-get)", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env)
    if not shutil.which("chromium"):
        print("[easel] chromium not found: browser tests will be skipped", flush=True)


def run_tests(pytest_args: list[str]) -> int:
    ensure_test_browser()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    args = pytest_args or ["tests"]
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=ROOT, env=env).returncode


def main(argv: list[str]) -> int:
    if sys.version_info < MIN_PYTHON:
        sys.exit(f"Easel needs Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer; this is {sys.version.split()[0]}")
    skip_install = "--skip-install" in argv
    reinstall = "--reinstall" in argv
    argv = [a for a in argv if a not in ("--skip-install", "--reinstall")]

    if not running_in_venv():
        if not skip_install or not venv_python().exists():
            ensure_venv(force_install=reinstall)
        env = dict(os.environ, EASEL_BOOTSTRAPPED="1")
        cmd = [str(venv_python()), str(Path(__file__).resolve()), "--skip-install", *argv]
        return subprocess.run(cmd, env=env).returncode

    if argv[:1] == ["--test"]:
        return run_tests(argv[1:])
    if "--test" in argv:
        sys.exit("--test must come first: python3 launch.py --test [pytest arguments]")

    sys.path.insert(0, str(ROOT))
    from webui.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
