"""Installing an extension: staged clone, the requirements question, pip only after agreement, atomic move.

Real git (file URLs) and real pip: pip installs a wheel built here from a local folder
(`--no-index --find-links`) into a target folder under tmp_path, so nothing reaches the
network and the shared environment is left alone.
"""
import base64
import hashlib
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from webui.extensions.manager import REQUIREMENTS_MARKER, ExtensionError, ExtensionManager
from webui.extensions.runtime import HookRunner
from webui.settings import SettingsStore

from test_extensions import write_extension

DEP = "easel-ext-test-dep"


def git(*args, cwd):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout.strip()


def source_repo(root: Path, name: str, requirements: str = "", code: str = "VALUE = 1\n") -> Path:
    files = {"requirements.txt": requirements} if requirements else {}
    repo = write_extension(root / "src", name, code, files=files)
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "first", cwd=repo)
    return repo


def build_wheel(folder: Path, version: str = "0.1") -> Path:
    """A minimal pure-Python wheel of `easel-ext-test-dep` (module easel_ext_test_dep)."""
    module, dist = "easel_ext_test_dep", f"easel_ext_test_dep-{version}"
    files = {
        f"{module}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {DEP}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: easel-test\nRoot-Is-Purelib: true\n"
                                   "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}.dist-info/RECORD"] = "\n".join(record + [f"{dist}.dist-info/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.fixture
def offline_pip(tmp_path, monkeypatch) -> Path:
    """pip (run by the manager) finds only our wheel and installs into tmp_path/site; returns that folder."""
    build_wheel(tmp_path / "wheels")
    site = tmp_path / "site"
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    monkeypatch.setenv("PIP_TARGET", str(site))
    return site


@pytest.fixture
def manager(tmp_path):
    store = SettingsStore(tmp_path / "config.json")
    store.load()
    return ExtensionManager(tmp_path / "extensions", store, HookRunner(), tmp_path / "cache")


def staged_leftovers(manager) -> list[Path]:
    return list(manager.staging_dir().iterdir()) if manager.staging_dir().exists() else []


def test_requirements_are_read_before_anything_is_installed(tmp_path, manager, offline_pip):
    repo = source_repo(tmp_path, "needs-dep", f"# comment\n{DEP}==0.1\n")
    pending = manager.stage_install(f"file://{repo}")
    assert pending.requirements == [f"{DEP}==0.1"] and pending.needs_answer and not pending.replaces
    assert pending.commit == git("rev-parse", "HEAD", cwd=repo)
    assert pending.path.parent == manager.staging_dir() and (pending.path / "extension.py").is_file()
    assert not (manager.folder / "needs-dep").exists()
    assert [e.name for e in manager.discover()] == []  # the staging area is not an extension
    assert not offline_pip.exists()  # no pip before the answer

    manager.cancel_install(pending.token)
    assert staged_leftovers(manager) == [] and not (manager.folder / "needs-dep").exists()
    with pytest.raises(ExtensionError, match="cancelled or has finished"):
        manager.finish_install(pending.token, install_requirements=True)

    pending = manager.stage_install(f"file://{repo}")
    ext, note = manager.finish_install(pending.token, install_requirements=True)
    assert (offline_pip / "easel_ext_test_dep" / "__init__.py").read_text() == "VERSION = '0.1'\n"  # pip ran
    assert ext.name == "needs-dep" and ext.path == manager.folder / "needs-dep" and ext.commit == pending.commit
    assert ext.requirements_missing == [] and manager.missing_requirements("needs-dep") == []
    assert (ext.path / REQUIREMENTS_MARKER).is_file()
    assert staged_leftovers(manager) == []


def test_failed_pip_leaves_nothing_installed(tmp_path, manager, offline_pip):
    repo = source_repo(tmp_path, "bad-dep", f"{DEP}==9.9\n")  # not in the local wheel folder
    pending = manager.stage_install(f"file://{repo}")
    with pytest.raises(ExtensionError, match="pip failed"):
        manager.finish_install(pending.token, install_requirements=True)
    assert not (manager.folder / "bad-dep").exists() and staged_leftovers(manager) == []


def test_install_without_requirements_then_install_them_later(tmp_path, manager, offline_pip):
    repo = source_repo(tmp_path, "later-dep", f"{DEP}==0.1\n")
    with pytest.raises(ExtensionError, match="agree to install"):
        manager.install_from_url(f"file://{repo}")  # one-call form: requirements need agreement
    assert not (manager.folder / "later-dep").exists() and staged_leftovers(manager) == []

    pending = manager.stage_install(f"file://{repo}")
    ext, note = manager.finish_install(pending.token, install_requirements=False)
    assert "not installed" in note and ext.requirements_missing == [f"{DEP}==0.1"]
    assert not offline_pip.exists()
    with pytest.raises(ExtensionError, match="agree to install"):
        manager.install_requirements("later-dep", agreed=False)
    manager.install_requirements("later-dep", agreed=True)
    assert (offline_pip / "easel_ext_test_dep").is_dir()
    assert manager.get("later-dep").requirements_missing == []


def test_requirements_already_in_the_environment_count_as_installed(tmp_path, manager):
    repo = source_repo(tmp_path, "has-dep", "pluggy>=1.0\n")  # Easel itself depends on pluggy
    pending = manager.stage_install(f"file://{repo}")
    ext, _ = manager.finish_install(pending.token, install_requirements=False)
    assert ext.requirements_missing == []
    (ext.path / "requirements.txt").write_text("pluggy>=99\n")
    assert manager.missing_requirements("has-dep") == ["pluggy>=99"]


def test_reinstall_replaces_the_installed_copy(tmp_path, manager):
    repo = source_repo(tmp_path, "again")
    first = manager.install_from_url(f"file://{repo}")
    (first.path / "local-file.txt").write_text("left over")
    with pytest.raises(ExtensionError, match="already installed"):
        manager.install_from_url(f"file://{repo}")
    assert (first.path / "local-file.txt").exists()

    (repo / "extension.py").write_text("VALUE = 2\n")
    git("commit", "-qam", "second", cwd=repo)
    pending = manager.stage_install(f"file://{repo}")
    assert pending.replaces and pending.needs_answer
    second, _ = manager.finish_install(pending.token, install_requirements=False)
    assert second.commit == git("rev-parse", "HEAD", cwd=repo) != first.commit
    assert (second.path / "extension.py").read_text() == "VALUE = 2\n"
    assert not (second.path / "local-file.txt").exists()
    assert staged_leftovers(manager) == []


def test_bundled_extensions_cannot_be_replaced(tmp_path, manager):
    repo = source_repo(tmp_path, "other")
    write_extension(manager.folder, "shipped", "", manifest={"bundled": True})
    with pytest.raises(ExtensionError, match="comes with Easel"):
        manager.stage_install(f"file://{repo}", name="shipped")
    assert staged_leftovers(manager) == []


def test_unfinished_installs_are_cleared_at_startup(tmp_path, manager):
    repo = source_repo(tmp_path, "forgotten")
    pending = manager.stage_install(f"file://{repo}")
    assert pending.path.is_dir()
    manager.load_all()
    assert not pending.path.exists() and "forgotten" not in [e.name for e in manager.extensions]
