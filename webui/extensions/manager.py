"""Finding, loading, installing and updating extensions in extensions/<name>/.

An extension is a folder with `extension.toml`:

    name = "my-extension"
    version = "1.0.0"
    api_version = "2"          # the major HOOK_API_VERSION it was written for
    entry = "extension.py"     # module with @hookimpl functions
    requires = []              # other extensions loaded first
    requirements = []          # pip packages (or a requirements.txt beside it)
    description = "..."
    tags = ["script"]

plus optional `javascript/*.js` and `style.css`, served to the page. Load order is
deterministic: dependencies first, then by name. A folder without a manifest means
`extension.py` under the folder's name, written for hook API 1 (so, since API 2, it is listed
with that reason and not loaded). Nothing an extension does at import or in a
hook can stop Easel: failures are recorded and shown in the Extensions tab.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text
from ..public_fetch import FetchRefused, fetch_public
from .hookspecs import HOOK_API_VERSION
from .runtime import HookRunner

log = logging.getLogger(__name__)
MANIFEST = "extension.toml"
STAGING = ".staging"  # extensions/.staging/: clones waiting for the user's answer
REQUIREMENTS_MARKER = ".easel-requirements-installed"  # in an extension's folder: what pip installed for it
DEFAULT_INDEX_URL = ("https://raw.githubusercontent.com/AUTOMATIC1111/stable-diffusion-webui-extensions/master/"
                     "index.json")
MAX_INDEX_BYTES = 16 << 20  # AUTOMATIC1111's index is about 1 MB
# shown wherever an extension is installed: the Extensions tab, its install messages, the docs
FULL_ACCESS_WARNING = ("Extensions are Python code that runs inside Easel with your full access: it can read and "
                       "change any of your files, use the network and run programs. Install only extensions "
                       "whose code and authors you trust.")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ExtensionError(RuntimeError):
    user_facing = True


@dataclass
class Manifest:
    name: str
    version: str = "0"
    api_version: str = "1"
    entry: str = "extension.py"
    requires: list[str] = field(default_factory=list)
    requirements: list[str] = field(default_factory=list)
    description: str = ""
    tags: list[str] = field(default_factory=list)
    bundled: bool = False


@dataclass
class Extension:
    name: str
    path: Path
    manifest: Manifest
    enabled: bool = True
    loaded: bool = False
    error: str = ""
    commit: str = ""
    remote: str = ""
    branch: str = ""
    requirements_missing: list[str] = field(default_factory=list)

    @property
    def scripts_js(self) -> list[Path]:
        folder = self.path / "javascript"
        return sorted(folder.glob("*.js")) if folder.is_dir() else []

    @property
    def style(self) -> Path | None:
        css = self.path / "style.css"
        return css if css.is_file() else None


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST
    if not path.is_file():
        return Manifest(folder.name)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ExtensionError(f"{folder.name}/{MANIFEST}: {exc}") from exc
    allowed = set(Manifest.__dataclass_fields__)
    values = {k: v for k, v in data.items() if k in allowed}
    values.setdefault("name", folder.name)
    return Manifest(**values)


@dataclass
class PendingInstall:
    """A clone in extensions/.staging/ waiting for the user's answer (requirements, replacing a copy)."""

    token: str
    name: str             # the folder it gets in extensions/
    path: Path            # where it is staged
    url: str
    commit: str
    manifest: Manifest
    requirements: list[str]
    replaces: bool = False  # a folder of that name exists and will be replaced

    @property
    def needs_answer(self) -> bool:
        return bool(self.requirements) or self.replaces


def _is_bundled(folder: Path) -> bool:
    try:
        return read_manifest(folder).bundled
    except ExtensionError:
        return False


def _requirements_of(folder: Path, manifest: Manifest) -> list[str]:
    """The manifest's `requirements` plus the lines of requirements.txt, without duplicates."""
    listed = [str(r).strip() for r in manifest.requirements if str(r).strip()]
    file = folder / "requirements.txt"
    if file.is_file():
        try:
            listed += [line.strip() for line in file.read_text(encoding="utf-8").splitlines()
                       if line.strip() and not line.strip().startswith("#")]
        except (OSError, UnicodeDecodeError) as exc:
            raise ExtensionError(f"{folder.name}/requirements.txt: {exc}") from exc
    return list(dict.fromkeys(listed))


def _missing_requirements(folder: Path, manifest: Manifest) -> list[str]:
    """Requirements neither installed through Easel (the marker) nor already satisfied in this environment."""
    done = _read_marker(folder)
    return [line for line in _requirements_of(folder, manifest) if line not in done and not _satisfied(line)]


def _read_marker(folder: Path) -> set[str]:
    try:
        return set(json.loads((folder / REQUIREMENTS_MARKER).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return set()


def _write_marker(folder: Path, installed: list[str]) -> None:
    atomic_write_text(folder / REQUIREMENTS_MARKER, json.dumps(sorted(set(installed) | _read_marker(folder))))


def _satisfied(line: str) -> bool:
    """Whether a requirement line is already met by an installed distribution (unknown forms count as not met)."""
    from importlib import metadata

    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:
        return False
    try:
        requirement = Requirement(line)
    except InvalidRequirement:
        return False
    if requirement.marker is not None and not requirement.marker.evaluate():
        return True
    if requirement.url:
        return False
    try:
        version = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        return False
    return requirement.specifier.contains(version, prereleases=True)


def _git(*args: str, cwd: Path | None = None, timeout: float = 300) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin:/usr/local/bin"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExtensionError(f"git {args[0]} failed: {exc}") from exc
    if done.returncode != 0:
        raise ExtensionError(f"git {args[0]} failed: {(done.stderr or done.stdout).strip()[:500]}")
    return done.stdout.strip()


def _order(extensions: list[Extension]) -> list[Extension]:
    """Dependencies first, then alphabetical; cycles and missing dependencies are reported, not fatal."""
    by_name = {e.name: e for e in extensions}
    ordered: list[Extension] = []
    state: dict[str, str] = {}

    def visit(ext: Extension, trail: tuple[str, ...]) -> None:
        if state.get(ext.name) == "done":
            return
        if ext.name in trail:
            ext.error = ext.error or f"dependency cycle: {' -> '.join(trail + (ext.name,))}"
            return
        for dep in sorted(ext.manifest.requires):
            if dep not in by_name:
                ext.error = ext.error or f"needs extension {dep!r}, which is not installed"
                continue
            visit(by_name[dep], trail + (ext.name,))
        state[ext.name] = "done"
        ordered.append(ext)

    for ext in sorted(extensions, key=lambda e: e.name.lower()):
        visit(ext, ())
    return ordered


class ExtensionManager:
    def __init__(self, folder: Path, settings, hooks: HookRunner, cache_dir: Path, allow_install: bool = True,
                 safe_mode: bool = False):
        self.folder = folder
        self.settings = settings
        self.hooks = hooks
        self.cache_dir = cache_dir
        self.allow_install = allow_install
        self.safe_mode = safe_mode
        self.extensions: list[Extension] = []
        self._lock = threading.RLock()
        self._pending: dict[str, PendingInstall] = {}

    # ---- discovery and loading -------------------------------------------------------------

    def disabled(self) -> set[str]:
        return set(self.settings.get("disabled_extensions") or [])

    def discover(self) -> list[Extension]:
        found = []
        if self.folder.is_dir():
            for path in sorted(self.folder.iterdir()):
                if not path.is_dir() or path.name.startswith((".", "_")):
                    continue
                try:
                    manifest = read_manifest(path)
                    ext = Extension(manifest.name, path, manifest, enabled=manifest.name not in self.disabled())
                except ExtensionError as exc:
                    ext = Extension(path.name, path, Manifest(path.name), enabled=False, error=str(exc))
                if (path / ".git").exists():
                    try:
                        ext.commit = _git("rev-parse", "HEAD", cwd=path)
                        ext.remote = _git("config", "--get", "remote.origin.url", cwd=path)
                        ext.branch = _git("rev-parse", "--abbrev-ref", "HEAD", cwd=path)
                    except ExtensionError:
                        pass
                try:
                    ext.requirements_missing = _missing_requirements(path, ext.manifest)
                except ExtensionError as exc:
                    ext.error = ext.error or str(exc)
                found.append(ext)
        with self._lock:
            previous = {e.name: e for e in self.extensions}
            for ext in found:  # what happened at load time stays known until the next restart
                before = previous.get(ext.name)
                if before is not None and before.path == ext.path:
                    ext.loaded = before.loaded
                    ext.error = ext.error or before.error
            self.extensions = _order(found)
        return list(self.extensions)

    def load_all(self) -> None:
        """Import every enabled extension in order; failures are recorded on the extension."""
        shutil.rmtree(self.staging_dir(), ignore_errors=True)  # installs nobody finished before a restart
        self.discover()
        if self.safe_mode:
            for ext in self.extensions:
                ext.error = ext.error or "not loaded: Easel started with --disable-extensions"
            return
        loaded: set[str] = set()
        for ext in self.extensions:
            if not ext.enabled or ext.error:
                continue
            missing = [d for d in ext.manifest.requires if d not in loaded]
            if missing:
                ext.error = f"not loaded: needs {', '.join(missing)} (disabled or failed)"
                continue
            try:
                self._load(ext)
                loaded.add(ext.name)
            except Exception as exc:  # an extension's import must never stop start-up
                ext.error = f"{type(exc).__name__}: {exc}"
                self.hooks.record(ext.name, "import", exc)

    def _load(self, ext: Extension) -> None:
        major = str(ext.manifest.api_version).split(".")[0]
        if major != HOOK_API_VERSION.split(".")[0]:
            raise ExtensionError(f"written for hook API {ext.manifest.api_version}; Easel provides {HOOK_API_VERSION}")
        entry = (ext.path / ext.manifest.entry).resolve()
        if ext.path.resolve() not in entry.parents or not entry.is_file():
            raise ExtensionError(f"entry module {ext.manifest.entry!r} not found in the extension folder")
        # The folder becomes the package easel_extensions.<name>, so the entry module can use
        # relative imports (`from .helpers import ...`) without clashing with other extensions.
        root = sys.modules.setdefault("easel_extensions", types.ModuleType("easel_extensions"))
        root.__path__ = getattr(root, "__path__", [])
        package_name = "easel_extensions." + re.sub(r"\W", "_", ext.name)
        package = types.ModuleType(package_name)
        package.__path__ = [str(ext.path)]
        sys.modules[package_name] = package
        module_name = f"{package_name}.{entry.stem}"
        spec = importlib.util.spec_from_file_location(module_name, entry)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            for name in [n for n in sys.modules if n == package_name or n.startswith(package_name + ".")]:
                sys.modules.pop(name, None)
            raise
        self.hooks.register(module, ext.name)
        ext.loaded = True

    def get(self, name: str) -> Extension:
        for ext in self.extensions:
            if ext.name == name:
                return ext
        raise ExtensionError(f"extension {name!r} is not installed")

    def set_enabled(self, name: str, enabled: bool) -> None:
        self.get(name)
        disabled = self.disabled()
        (disabled.discard if enabled else disabled.add)(name)
        self.settings.set_extra("disabled_extensions", sorted(disabled))
        self.discover()

    def set_enabled_list(self, enabled_names: list[str]) -> None:
        names = {e.name for e in self.discover()}
        self.settings.set_extra("disabled_extensions", sorted(names - set(enabled_names)))
        self.discover()

    def assets(self) -> tuple[list[Path], list[Path]]:
        """(javascript files, stylesheets) of loaded extensions, in load order."""
        scripts, styles = [], []
        for ext in self.extensions:
            if ext.loaded:
                scripts += ext.scripts_js
                if ext.style:
                    styles.append(ext.style)
        return scripts, styles

    # ---- installing --------------------------------------------------------------------------

    def _check_install_allowed(self) -> None:
        """Installing, updating and uninstalling change which code runs (or delete a folder on the server):
        with --listen, only with --enable-insecure-extension-access."""
        if not self.allow_install:
            raise ExtensionError("Installing, updating and uninstalling extensions is disabled because Easel "
                                 "listens beyond 127.0.0.1; start it with --enable-insecure-extension-access "
                                 "to allow it.")

    def staging_dir(self) -> Path:
        """Where clones wait for the user's answer; ignored by discovery, emptied at start-up."""
        return self.folder / STAGING

    def stage_install(self, url: str, branch: str = "", name: str = "") -> PendingInstall:
        """git clone into extensions/.staging/ and read what the extension needs; nothing is installed yet.

        The caller shows `requirements` (and whether an installed copy is replaced) to the user,
        then calls `finish_install` or `cancel_install`.
        """
        self._check_install_allowed()
        url = url.strip()
        if not url:
            raise ExtensionError("url: give the git URL of the extension")
        name = (name or url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")).strip()
        if not _NAME.match(name):
            raise ExtensionError(f"name: {name!r} is not a valid folder name")
        target = self.folder / name
        if target.exists() and _is_bundled(target):
            raise ExtensionError(f"{name} comes with Easel and cannot be replaced; choose another folder name")
        self.staging_dir().mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(8)
        staged = self.staging_dir() / f"{name}-{token}"
        try:
            _git("clone", "--quiet", *(["--branch", branch.strip()] if branch.strip() else []), "--", url, str(staged))
            manifest = read_manifest(staged)
            if not (staged / MANIFEST).is_file():
                manifest.name = name
            if manifest.bundled:
                raise ExtensionError(f"{name}: an installed extension cannot claim bundled = true")
            pending = PendingInstall(token, name, staged, url, _git("rev-parse", "HEAD", cwd=staged), manifest,
                                     _requirements_of(staged, manifest), replaces=target.exists())
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        with self._lock:
            self._pending[token] = pending
        return pending

    def finish_install(self, token: str, install_requirements: bool) -> tuple[Extension, str]:
        """Install the staged extension: its requirements first (if the user agreed), then one rename into place.

        Returns the extension and a note on its requirements. If pip fails, nothing lands in extensions/.
        """
        self._check_install_allowed()
        with self._lock:
            pending = self._pending.pop(token, None)
        if pending is None or not pending.path.is_dir():
            raise ExtensionError("install: this install was cancelled or has finished; start it again")
        target = self.folder / pending.name
        try:
            note = "no requirements"
            if pending.requirements:
                if install_requirements:
                    note = self._pip_install(pending.requirements)
                    _write_marker(pending.path, pending.requirements)
                else:
                    note = f"requirements not installed: {', '.join(pending.requirements)}"
            self._move_into_place(pending, target)
        finally:
            shutil.rmtree(pending.path, ignore_errors=True)  # only still there if something failed
        self.discover()
        for ext in self.extensions:
            if ext.path == target:
                return ext, note
        raise ExtensionError(f"{pending.name} was installed but could not be read back")

    def cancel_install(self, token: str) -> None:
        with self._lock:
            pending = self._pending.pop(token, None)
        if pending is not None:
            shutil.rmtree(pending.path, ignore_errors=True)

    def _move_into_place(self, pending: PendingInstall, target: Path) -> None:
        """One rename puts the new folder in place; a replaced copy is moved aside first and restored on failure."""
        with self._lock:
            old = None
            if target.exists():
                if not pending.replaces:
                    raise ExtensionError(f"{pending.name} was installed meanwhile; install again to replace it")
                if _is_bundled(target):
                    raise ExtensionError(f"{pending.name} comes with Easel and cannot be replaced")
                old = self.staging_dir() / f"{pending.name}-replaced-{pending.token}"
                target.rename(old)
            try:
                pending.path.rename(target)
            except OSError as exc:
                if old is not None:
                    old.rename(target)
                raise ExtensionError(f"could not move {pending.name} into {self.folder}: {exc}") from exc
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)

    def install_from_url(self, url: str, branch: str = "", name: str = "", agreed: bool = False,
                         replace: bool = False) -> Extension:
        """Stage and finish in one call (scripts, tests): requirements need `agreed`, reinstalling `replace`."""
        pending = self.stage_install(url, branch, name)
        if pending.replaces and not replace:
            self.cancel_install(pending.token)
            raise ExtensionError(f"{pending.name} is already installed; reinstalling replaces it")
        if pending.requirements and not agreed:
            self.cancel_install(pending.token)
            raise ExtensionError(f"{pending.name} needs {', '.join(pending.requirements)}; agree to install them "
                                 "(nothing was installed)")
        return self.finish_install(pending.token, install_requirements=True)[0]

    def check_update(self, name: str) -> bool:
        ext = self.get(name)
        if not (ext.path / ".git").exists():
            raise ExtensionError(f"{name} was not installed with git")
        _git("fetch", "--quiet", "origin", cwd=ext.path)
        local = _git("rev-parse", "HEAD", cwd=ext.path)
        remote = _git("rev-parse", "@{u}", cwd=ext.path)
        return local != remote

    def update(self, name: str) -> str:
        """Fast-forward to the remote branch; returns the new commit."""
        self._check_install_allowed()
        ext = self.get(name)
        self.check_update(name)
        _git("merge", "--ff-only", "@{u}", cwd=ext.path)
        self.discover()
        return self.get(name).commit

    def uninstall(self, name: str) -> None:
        self._check_install_allowed()
        ext = self.get(name)
        if ext.manifest.bundled:
            raise ExtensionError(f"{name} comes with Easel; disable it instead")
        self.hooks.unregister(name)
        shutil.rmtree(ext.path)
        self.discover()

    def requirements(self, name: str) -> list[str]:
        ext = self.get(name)
        return _requirements_of(ext.path, ext.manifest)

    def missing_requirements(self, name: str) -> list[str]:
        """Requirements neither installed through Easel nor already satisfied in this environment."""
        ext = self.get(name)
        return _missing_requirements(ext.path, ext.manifest)

    def install_requirements(self, name: str, agreed: bool) -> str:
        """pip install an installed extension's requirements into Easel's environment - only if the user agreed."""
        ext = self.get(name)
        wanted = self.requirements(name)
        if not wanted:
            return "no requirements"
        if not agreed:
            raise ExtensionError(f"{name} needs {', '.join(wanted)}; agree to install them")
        self._check_install_allowed()
        note = self._pip_install(wanted)
        _write_marker(ext.path, wanted)
        self.discover()
        return note

    def _pip_install(self, wanted: list[str]) -> str:
        try:
            done = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *wanted],
                                  capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ExtensionError(f"pip failed: {exc}") from exc
        if done.returncode != 0:
            raise ExtensionError(f"pip failed: {(done.stderr or done.stdout).strip()[-800:]}")
        return done.stdout.strip()[-800:] or "requirements installed"

    # ---- the index of available extensions ------------------------------------------------------

    def index_cache(self) -> Path:
        return self.cache_dir / "extensions-index.json"

    def fetch_index(self, url: str, max_age: float = 3600) -> list[dict[str, Any]]:
        """Extensions listed at `url` (AUTOMATIC1111's index format), cached for `max_age` seconds.

        While installing is off (--listen without --enable-insecure-extension-access) the URL may
        come from a remote user, so it goes through the image URLs' filter (`public_fetch`: public
        addresses only, each redirect checked); otherwise whoever types it could install code
        anyway, and a private or local index mirror is allowed."""
        url = url.strip()
        cache = self.index_cache()
        if cache.is_file() and time.time() - cache.stat().st_mtime < max_age:
            cached = json.loads(cache.read_text())
            if cached.get("url") == url:
                return cached["extensions"]
        try:
            data = self._download_index(url)
            entries = json.loads(data).get("extensions", [])
            if not isinstance(entries, list):
                raise ValueError("'extensions' is not a list")
        except FetchRefused as exc:
            raise ExtensionError(f"index URL {url}: {exc}") from exc
        except (OSError, ValueError, AttributeError) as exc:
            if cache.is_file():
                log.warning("extension index unavailable (%s); using the cached copy", exc)
                return json.loads(cache.read_text())["extensions"]
            raise ExtensionError(f"could not load the extension index from {url}: {exc}") from exc
        entries = [e for e in entries if isinstance(e, dict) and e.get("url")]
        atomic_write_text(cache, json.dumps({"url": url, "extensions": entries}))
        return entries

    def _download_index(self, url: str) -> bytes:
        if not self.allow_install:
            return fetch_public(url, noun="index URL", max_bytes=MAX_INDEX_BYTES, timeout=20,
                                accept=b"application/json")
        import httpx

        try:
            response = httpx.get(url, timeout=20, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise OSError(str(exc)) from exc
        if len(response.content) > MAX_INDEX_BYTES:
            raise ValueError(f"the index is larger than {MAX_INDEX_BYTES} bytes")
        return response.content

    @staticmethod
    def search(entries: list[dict[str, Any]], query: str) -> list[dict[str, Any]]:
        words = query.lower().split()
        def matches(entry: dict) -> bool:
            haystack = " ".join([str(entry.get("name", "")), str(entry.get("description", "")),
                                 " ".join(map(str, entry.get("tags", [])))]).lower()
            return all(w in haystack for w in words)
        return [e for e in entries if matches(e)]
