"""Downloading model files from a Hugging Face compatible hub or a direct URL into the right models/ folder.

Why it is shaped this way:
- Bytes go to a hidden `.<name>.partial` beside the final file. Every model scanner skips hidden
  files, so a half-written file never shows up as a model; it is fsynced and renamed to its final
  name only when it is complete and its checksum (when known) matches.
- An interrupted or cancelled download keeps its partial file, and the next attempt asks for the
  rest with a Range request. `If-Range` carries the first response's ETag, so a file that changed
  on the server restarts instead of being spliced; a server that ignores Range (200) restarts too.
- The hub token goes only to the hub endpoint's own origin: redirects are followed by hand, and the
  CDN the hub redirects to (or any other host) never sees it.
- Downloads run on their own small worker pool, not on the generation queue: a 7 GB file must not
  hold up generation, and cancelling one must not touch a running job.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import shutil
import stat
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, unquote

import httpx

from ..fileio import format_size
from ..paths import MODEL_FOLDERS, Paths, UnsafePathError, safe_join
from .starter import StarterFile, starter

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MAX_REDIRECTS = 10
PARTIAL_SUFFIX = ".partial"
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(RuntimeError):
    """A download could not be done; the message says why and what to do."""

    user_facing = True


class DownloadCancelled(DownloadError):
    pass


# ---- names and URLs ------------------------------------------------------------------------------


def partial_path(final: Path) -> Path:
    """The hidden file a download is written to until it is complete."""
    return final.with_name(f".{final.name}{PARTIAL_SUFFIX}")


def _meta_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{PARTIAL_SUFFIX}.json")


def check_file_name(name: str, field_name: str = "file name") -> str:
    """A relative name for a file inside a model folder: no absolute paths, `..`, hidden or partial names."""
    name = (name or "").strip()
    parts = name.split("/")
    if (not name or "\\" in name or "\x00" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name)
            or any(p in ("", ".", "..") or p.startswith(".") for p in parts) or name.endswith(PARTIAL_SUFFIX)):
        raise DownloadError(f"{field_name} {name!r} is not allowed: give a plain file name (no folders outside "
                            f"the model folder, no '..', not starting with '.')")
    return name


def check_sha256(value: str | None, field_name: str = "sha256") -> str | None:
    value = (value or "").strip().lower()
    if not value:
        return None
    if not _SHA256.match(value):
        raise DownloadError(f"{field_name}: {value!r} is not a sha256 (64 hex digits)")
    return value


def hub_file_url(endpoint: str, repo: str, path: str, revision: str = "main") -> str:
    """`{endpoint}/{repo}/resolve/{revision}/{path}`, the URL a Hugging Face hub serves a repository file at."""
    repo, path, revision = repo.strip(), path.strip(), (revision or "main").strip()
    if not _REPO_ID.match(repo) or ".." in repo:
        raise DownloadError(f"repository {repo!r} is not a Hugging Face repository id (owner/name)")
    parts = path.split("/")
    if not path or "\\" in path or any(p in ("", ".", "..") for p in parts):
        raise DownloadError(f"file path {path!r} is not a path inside the repository")
    if not revision or any(c.isspace() for c in revision) or ".." in revision:
        raise DownloadError(f"revision {revision!r} is not a branch, tag or commit")
    return (f"{endpoint.rstrip('/')}/{repo}/resolve/{quote(revision, safe='')}/"
            + "/".join(quote(p, safe="") for p in parts))


def check_url(url: str) -> str:
    url = (url or "").strip()
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise DownloadError(f"URL {url!r} is not valid: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise DownloadError(f"URL {url!r} must start with http:// or https://")
    return url


def file_name_from(url_or_path: str) -> str:
    """The last path segment, decoded: what a file from this URL or repository path is called."""
    # the last segment as sent, then decoded: an encoded "..%2F" must be seen (and refused), not resolved away
    path = httpx.URL(url_or_path).raw_path.decode("ascii").split("?", 1)[0] if "://" in url_or_path else url_or_path
    return unquote(path.rstrip("/").rsplit("/", 1)[-1])


def _origin(url: str | httpx.URL) -> tuple[str, str, int | None]:
    parsed = httpx.URL(str(url))
    port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)
    return parsed.scheme, parsed.host.lower(), port


# ---- one file ------------------------------------------------------------------------------------


@dataclass
class Progress:
    done: int
    total: int | None
    speed: float                  # bytes per second over this attempt
    eta: float | None             # seconds


class _Restart(Exception):
    """The partial file cannot be continued; start again from zero."""


class Fetcher:
    """Streams one URL to one file: resume, verify, rename; knows nothing of queues or UIs."""

    def __init__(self, hub_endpoint: Callable[[], str], hub_token: Callable[[], str], timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None, progress_interval: float = 0.25):
        self.hub_endpoint = hub_endpoint
        self.hub_token = hub_token
        self.timeout = timeout
        self.transport = transport
        self.progress_interval = progress_interval

    def is_hub(self, url: str | httpx.URL) -> bool:
        try:
            return _origin(url) == _origin(self.hub_endpoint())
        except (httpx.InvalidURL, ValueError):
            return False

    def fetch(self, url: str, final: Path, *, sha256: str | None = None, overwrite: bool = False,
              progress: Callable[[Progress], None] | None = None, cancel: threading.Event | None = None) -> str:
        """Download url to final; returns the file's sha256. Raises DownloadError (partial kept unless corrupt)."""
        partial, digest = self.fetch_partial(url, final, sha256=sha256, overwrite=overwrite, progress=progress,
                                             cancel=cancel)
        if final.exists() and not overwrite:
            raise DownloadError(f"{final.name} appeared in {final.parent} while downloading; the download is kept "
                                f"as {partial.name}")
        os.replace(partial, final)
        _meta_path(final).unlink(missing_ok=True)
        _fsync_dir(final.parent)
        return digest

    def fetch_partial(self, url: str, final: Path, *, sha256: str | None = None, overwrite: bool = False,
                      progress: Callable[[Progress], None] | None = None,
                      cancel: threading.Event | None = None) -> tuple[Path, str]:
        """Bring the partial file for `final` to completion and verify it; returns (partial, sha256)."""
        if final.exists() and not overwrite:
            raise DownloadError(f"{final.name} already exists in {final.parent}; delete it first or choose to "
                                f"overwrite")
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = partial_path(final)
        for _attempt in range(3):
            try:
                hasher = self._stream(url, final, partial, progress, cancel)
                break
            except _Restart:
                partial.unlink(missing_ok=True)
                _meta_path(final).unlink(missing_ok=True)
        else:
            raise DownloadError(f"{final.name}: the server kept refusing to continue the download; try again later")
        actual = hasher.hexdigest()
        if sha256 and actual != sha256.lower():
            partial.unlink(missing_ok=True)
            _meta_path(final).unlink(missing_ok=True)
            raise DownloadError(f"{final.name}: checksum mismatch, expected sha256 {sha256.lower()} but the "
                                f"downloaded file has {actual}; the download was deleted")
        return partial, actual

    # -- internals --

    def _stream(self, url: str, final: Path, partial: Path, progress: Callable[[Progress], None] | None,
                cancel: threading.Event | None) -> "hashlib._Hash":
        """Bring the partial file to the full length; returns the sha256 of the whole file, computed as the bytes
        arrive (plus a read of the part already on disk when resuming), so the file is never read twice."""
        offset = partial.stat().st_size if partial.is_file() else 0
        meta = _read_meta(final)
        if offset and meta.get("url") != url:
            raise _Restart()  # a partial from another source is not this file's beginning
        timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, 15.0))
        with httpx.Client(timeout=timeout, follow_redirects=False, transport=self.transport) as client:
            response = self._open(client, url, final.name, offset, meta.get("validator"))
            try:
                total = self._resume_point(response, final.name, offset)
                if total is None and response.status_code == 416:
                    return _sha256_prefix(partial, offset)  # the partial is already the whole file
                if response.status_code == 200:
                    offset = 0
                    validator = response.headers.get("etag") or response.headers.get("last-modified")
                    _write_meta(final, {"url": url, "validator": validator if validator else None})
                hasher = _sha256_prefix(partial, offset)
                self._copy(response, partial, offset, total, final.name, progress, cancel, hasher)
                return hasher
            finally:
                response.close()

    def _open(self, client: httpx.Client, url: str, name: str, offset: int, validator: str | None) -> httpx.Response:
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            headers = {"User-Agent": "Easel", "Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
                if validator:
                    headers["If-Range"] = validator
            token = (self.hub_token() or "").strip()
            if token and self.is_hub(current):
                headers["Authorization"] = f"Bearer {token}"
            try:
                response = client.send(client.build_request("GET", current, headers=headers), stream=True)
            except httpx.TransportError as exc:
                raise self._unreachable(current, exc) from None
            if response.status_code in (301, 302, 303, 307, 308) and response.headers.get("location"):
                response.close()
                current = str(httpx.URL(current).join(response.headers["location"]))
                if httpx.URL(current).scheme not in ("http", "https"):
                    raise DownloadError(f"{name}: the server redirected to a non-http address")
                continue
            if response.status_code >= 400 and response.status_code != 416:
                response.close()
                raise self._http_error(current, name, response.status_code)
            return response
        raise DownloadError(f"{name}: too many redirects from {httpx.URL(url).host}")

    @staticmethod
    def _resume_point(response: httpx.Response, name: str, offset: int) -> int | None:
        """The full size when known; checks that a 206 continues where the partial ends."""
        status = response.status_code
        if status == 416:
            match = re.match(r"bytes \*/(\d+)", response.headers.get("content-range", ""))
            if match and offset and int(match.group(1)) == offset:
                return None
            raise _Restart()
        if status == 206:
            match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("content-range", ""))
            if not match or int(match.group(1)) != offset:
                raise _Restart()
            return int(match.group(3)) if match.group(3) != "*" else None
        if status != 200:
            raise DownloadError(f"{name}: unexpected answer HTTP {status} from {response.url.host}")
        length = response.headers.get("content-length")
        return int(length) if length and length.isdigit() else None

    def _copy(self, response: httpx.Response, partial: Path, offset: int, total: int | None, name: str,
              progress: Callable[[Progress], None] | None, cancel: threading.Event | None,
              hasher: "hashlib._Hash") -> None:
        done, started, last = offset, time.monotonic(), 0.0

        def report(force: bool = False) -> None:
            nonlocal last
            now = time.monotonic()
            if progress is None or (not force and now - last < self.progress_interval):
                return
            last = now
            speed = (done - offset) / max(now - started, 1e-6)
            eta = (total - done) / speed if total is not None and speed > 0 else None
            progress(Progress(done, total, speed, eta))

        report(force=True)
        with open(partial, "ab" if offset else "wb") as handle:
            try:
                for chunk in response.iter_bytes():  # as it arrives, so progress and cancel stay live
                    if cancel is not None and cancel.is_set():
                        raise DownloadCancelled(f"{name}: cancelled; {format_size(done)} kept for resuming")
                    handle.write(chunk)
                    hasher.update(chunk)
                    done += len(chunk)
                    report()
                if cancel is not None and cancel.is_set():
                    raise DownloadCancelled(f"{name}: cancelled; {format_size(done)} kept for resuming")
            except httpx.TransportError as exc:
                raise DownloadError(f"{name}: the download was interrupted after {format_size(done)}"
                                    f"{' of ' + format_size(total) if total else ''} ({_reason(exc)}); press Resume to "
                                    f"continue where it stopped") from None
            finally:
                handle.flush()
                os.fsync(handle.fileno())
        report(force=True)
        if total is not None and done != total:
            raise DownloadError(f"{name}: the connection closed after {format_size(done)} of {format_size(total)}; press "
                                f"Resume to continue where it stopped")

    def _unreachable(self, url: str, exc: Exception) -> DownloadError:
        host = httpx.URL(url).host
        where = "the hub endpoint in Settings" if self.is_hub(url) else "the URL"
        return DownloadError(f"could not reach {host}: {_reason(exc)}; check the connection or {where}")

    def _http_error(self, url: str, name: str, status: int) -> DownloadError:
        host = httpx.URL(url).host
        if status in (401, 403):
            if self.is_hub(url):
                return DownloadError(f"{name} needs a token: {host} answered HTTP {status}. Accept the model's "
                                     f"licence on its page and put an access token in Settings → Downloads")
            return DownloadError(f"{name}: {host} refused access (HTTP {status})")
        if status == 404:
            return DownloadError(f"{name} not found on {host} (HTTP 404); check the repository, file path and "
                                 f"revision" if self.is_hub(url) else f"{name} not found on {host} (HTTP 404)")
        return DownloadError(f"{name}: {host} answered HTTP {status}; try again later")


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _sha256_prefix(path: Path, length: int) -> "hashlib._Hash":
    """A sha256 fed with the first `length` bytes of `path` (what a resumed download already has)."""
    digest = hashlib.sha256()
    if length:
        with open(path, "rb") as handle:
            while length and (chunk := handle.read(min(CHUNK, length))):
                digest.update(chunk)
                length -= len(chunk)
    return digest


def _read_meta(final: Path) -> dict[str, Any]:
    try:
        data = json.loads(_meta_path(final).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_meta(final: Path, data: dict[str, Any]) -> None:
    _meta_path(final).write_text(json.dumps(data), encoding="utf-8")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- archives ------------------------------------------------------------------------------------


def _check_member(info: zipfile.ZipInfo, archive_name: str) -> str:
    name = info.filename.replace("\\", "/")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise DownloadError(f"{archive_name}: refused, the archive entry {info.filename!r} points outside its "
                            f"folder")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DownloadError(f"{archive_name}: refused, the archive entry {info.filename!r} is a link")
    return "/".join(parts)


def unpack_zip(archive: Path, folder: Path, overwrite: bool = False, archive_name: str | None = None) -> list[Path]:
    """Unpack a .zip into `folder` (a lone top-level folder inside is lifted out); refuses unsafe entries."""
    archive_name = archive_name or archive.name
    if folder.exists() and not overwrite:
        raise DownloadError(f"{folder.name} already exists in {folder.parent}; delete it first or choose to overwrite")
    staging = folder.with_name(f".{folder.name}.unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [(info, _check_member(info, archive_name)) for info in bundle.infolist()]
            staging.mkdir(parents=True)
            for info, name in members:
                if not name or name.split("/")[0] == "__MACOSX":
                    continue
                destination = safe_join(staging, name)
                if info.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(info) as source, open(destination, "wb") as target:
                    shutil.copyfileobj(source, target, CHUNK)
        entries = list(staging.iterdir())
        content = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(content, folder)
        return sorted(p for p in folder.rglob("*") if p.is_file())
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{archive_name}: not a valid zip archive ({exc})") from None
    except UnsafePathError as exc:
        raise DownloadError(f"{archive_name}: refused, {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---- the list of downloads -----------------------------------------------------------------------


@dataclass
class Download:
    """One file being fetched; the UI polls these fields."""

    id: str
    label: str
    kind: str
    url: str
    target: Path                     # the final file, or the folder a pack unpacks into
    sha256: str | None = None
    size: int | None = None
    unpack: bool = False
    overwrite: bool = False
    state: str = QUEUED
    done: int = 0
    total: int | None = None
    speed: float = 0.0
    eta: float | None = None
    error: str = ""
    computed_sha256: str = ""
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in (DONE, FAILED, CANCELLED)

    @property
    def fraction(self) -> float:
        if self.state == DONE:
            return 1.0
        total = self.total or self.size
        return min(1.0, self.done / total) if total else 0.0


class DownloadManager:
    """Keeps the downloads of this session and runs them on a few worker threads of its own."""

    def __init__(self, paths: Paths, settings: Any, workers: int = 2, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None):
        self.paths = paths
        self.settings = settings
        self.workers = max(1, workers)
        self.fetcher = Fetcher(lambda: settings.get("hub_endpoint") or "https://huggingface.co",
                               lambda: settings.get("hub_token") or "", timeout=timeout, transport=transport)
        self.listeners: list[Callable[[Download], None]] = []  # called when a download ends (any state)
        self._items: dict[str, Download] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._closed = False

    # -- adding --

    def folder(self, kind: str) -> Path:
        if kind not in MODEL_FOLDERS:
            raise DownloadError(f"kind {kind!r} is not a model kind; choose one of: {', '.join(MODEL_FOLDERS)}")
        return self.paths.model_dir(kind)

    def _target(self, kind: str, name: str) -> Path:
        try:
            return safe_join(self.folder(kind), check_file_name(name))
        except UnsafePathError as exc:
            raise DownloadError(f"file name: {exc}") from None

    def add_hub_file(self, repo: str, path: str, kind: str, revision: str = "main", filename: str | None = None,
                     sha256: str | None = None, size: int | None = None, overwrite: bool = False,
                     label: str | None = None) -> Download:
        """Queue one file of a hub repository; it lands in the kind's folder as `filename` (default: its name)."""
        url = hub_file_url(self.fetcher.hub_endpoint(), repo, path, revision)
        target = self._target(kind, filename or file_name_from(path))
        return self._add(Download(uuid.uuid4().hex[:10], label or f"{repo.strip()}: {path.strip()}", kind, url,
                                  target, check_sha256(sha256), size, overwrite=overwrite))

    def add_url(self, url: str, kind: str, filename: str | None = None, sha256: str | None = None,
                size: int | None = None, overwrite: bool = False, label: str | None = None,
                unpack: bool = False) -> Download:
        """Queue a direct http(s) URL; `unpack`: a .zip whose contents go into the folder `filename`."""
        url = check_url(url)
        name = filename or file_name_from(url)
        if unpack and not filename:
            name = name[:-4] if name.lower().endswith(".zip") else name
        target = self._target(kind, name)
        return self._add(Download(uuid.uuid4().hex[:10], label or name, kind, url, target, check_sha256(sha256),
                                  size, unpack=unpack, overwrite=overwrite))

    def add_input(self, source: str, path: str, kind: str, revision: str = "", filename: str = "",
                  sha256: str = "") -> Download:
        """What the UI's free-form box holds: a URL, or a repository id plus the file path inside it."""
        source, path = (source or "").strip(), (path or "").strip()
        if not source:
            raise DownloadError("repository or URL: enter a Hugging Face repository id (owner/name) or a URL")
        if "://" in source:
            url = check_url(source)
            parsed = httpx.URL(url)
            parts = parsed.path.split("/")
            if self.fetcher.is_hub(url) and len(parts) > 4 and parts[3] == "blob":
                # a hub page link (".../blob/...") names the same file as ".../resolve/..."
                url = str(parsed.copy_with(path="/".join(parts[:3] + ["resolve"] + parts[4:])))
            return self.add_url(url, kind, filename or None, sha256)
        if not path:
            raise DownloadError("file path: enter the path of the file inside the repository")
        return self.add_hub_file(source, path, kind, revision or "main", filename or None, sha256)

    def add_starter(self, name: str, overwrite: bool = False) -> list[Download]:
        """Queue every file of a starter entry that is not installed yet."""
        try:
            item = starter(name)
        except KeyError:
            raise DownloadError(f"{name!r} is not in the starter list") from None
        missing = [f for f in item.files
                   if overwrite or not self._target(item.kind, f.target).exists()]
        if not missing:
            raise DownloadError(f"{item.title} is already installed in {self.folder(item.kind)}")
        many = len(missing) > 1
        return [self._add_starter_file(item.title + (f" ({f.target})" if many else ""), item.kind, f, overwrite)
                for f in missing]

    def _add_starter_file(self, label: str, kind: str, entry: StarterFile, overwrite: bool) -> Download:
        if entry.url:
            return self.add_url(entry.url, kind, entry.target, entry.sha256, entry.size or None, overwrite, label,
                                unpack=entry.unpack)
        return self.add_hub_file(entry.repo, entry.path, kind, entry.revision, entry.target, entry.sha256,
                                 entry.size or None, overwrite, label)

    def _add(self, item: Download) -> Download:
        with self._lock:
            if self._closed:
                raise DownloadError("downloads are shut down")
            for other in self._items.values():
                if other.target == item.target and not other.finished:
                    return other  # the same file twice would write one partial from two threads
            if item.target.exists() and not item.overwrite:
                raise DownloadError(f"{item.target.name} already exists in {item.target.parent}; delete it first "
                                    f"or choose to overwrite")
            self._items[item.id] = item
            self._start_workers()
        self._pending.put(item.id)
        return item

    def _start_workers(self) -> None:
        while len(self._threads) < self.workers:
            thread = threading.Thread(target=self._work, name=f"easel-download-{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()

    # -- control --

    def list(self) -> list[Download]:
        with self._lock:
            return list(self._items.values())

    def get(self, download_id: str) -> Download:
        with self._lock:
            if download_id not in self._items:
                raise DownloadError(f"no download with id {download_id!r}")
            return self._items[download_id]

    def cancel(self, download_id: str) -> Download:
        """Stop a download; its partial file stays for Resume."""
        item = self.get(download_id)
        with self._lock:
            item.cancel_event.set()
            if item.state == QUEUED:
                item.state, item.error = CANCELLED, "cancelled before it started"
                self._changed.notify_all()
        return item

    def resume(self, download_id: str) -> Download:
        """Queue a failed or cancelled download again; it continues from its partial file."""
        item = self.get(download_id)
        with self._lock:
            if not item.finished or item.state == DONE:
                return item
            item.cancel_event = threading.Event()
            item.state, item.error, item.speed, item.eta = QUEUED, "", 0.0, None
            self._start_workers()
        self._pending.put(item.id)
        return item

    def clear_finished(self) -> None:
        with self._lock:
            self._items = {k: v for k, v in self._items.items() if not v.finished}

    def wait(self, download_id: str, timeout: float | None = None) -> Download:
        """Block until the download has finished (done, failed or cancelled) or the timeout passes."""
        item = self.get(download_id)
        with self._changed:
            self._changed.wait_for(lambda: item.finished, timeout)
        return item

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for item in self._items.values():
                item.cancel_event.set()
            threads = list(self._threads)
        for _ in threads:
            self._pending.put(None)
        for thread in threads:
            thread.join(timeout=5)

    # -- the workers --

    def _work(self) -> None:
        while True:
            download_id = self._pending.get()
            if download_id is None:
                return
            with self._lock:
                item = self._items.get(download_id)
                if item is None or item.state != QUEUED:
                    continue
                if item.cancel_event.is_set():
                    item.state = CANCELLED
                    self._changed.notify_all()
                    continue
                item.state = RUNNING
            try:
                item.computed_sha256 = self._run(item)
                state, error = DONE, ""
            except DownloadCancelled as exc:
                state, error = CANCELLED, str(exc)
            except DownloadError as exc:
                state, error = FAILED, str(exc)
            except Exception as exc:  # a disk error or a bug: the list must still show why
                log.exception("download %s failed", item.label)
                state, error = FAILED, f"{item.target.name}: download failed: {exc}"
            with self._lock:
                item.state, item.error, item.speed, item.eta = state, error, 0.0, None
                self._changed.notify_all()
            for listener in list(self.listeners):
                try:
                    listener(item)
                except Exception:
                    log.exception("download listener failed")

    def _run(self, item: Download) -> str:
        def progress(p: Progress) -> None:
            item.done, item.total, item.speed, item.eta = p.done, p.total, p.speed, p.eta

        if not item.unpack:
            return self.fetcher.fetch(item.url, item.target, sha256=item.sha256, overwrite=item.overwrite,
                                      progress=progress, cancel=item.cancel_event)
        archive = item.target.with_name(item.target.name + ".zip")
        if item.target.exists() and not item.overwrite:
            raise DownloadError(f"{item.target.name} already exists in {item.target.parent}")
        partial, digest = self.fetcher.fetch_partial(item.url, archive, sha256=item.sha256, overwrite=True,
                                                     progress=progress, cancel=item.cancel_event)
        try:
            unpack_zip(partial, item.target, overwrite=item.overwrite, archive_name=archive.name)
        finally:  # unpacked, or refused: either way the verified archive is of no further use
            partial.unlink(missing_ok=True)
        _meta_path(archive).unlink(missing_ok=True)
        return digest
