"""What keeps the private Ray cluster of `--workers` to this machine and to this Easel process.

Two things, both set in the environment before Ray is imported, so that every process Ray starts
(GCS, raylet, its agents, the workers) inherits them:

* **Loopback only.** `ray.init(_node_ip_address="127.0.0.1")` alone is not enough: Ray replaces a
  loopback node address by the machine's LAN address (services.resolve_ip_for_localhost), and its
  servers bind the node address. Ray keeps a loopback node address only where clusters are off,
  which `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` says on any platform (its name is historical: it is
  the switch Ray uses for single-machine installs on macOS and Windows). Then GCS, raylet, object
  manager, the runtime-env agent and every worker's gRPC server listen on 127.0.0.1 only
  (tests/test_workers.py checks each listening socket of the processes Ray started).
* **A token of its own.** Token authentication is on (`RAY_AUTH_MODE=token`) with a fresh random
  token per start, written to `<data dir>/ray/auth_token-<pid>` with mode 0600 in a 0700 folder
  and named by `RAY_AUTH_TOKEN_PATH`, instead of Ray's default `~/.ray/auth_token` (created 0644).
  The cluster dies with this process, so nothing keeps the token across starts: the file is
  removed when the workers stop.

Joining a cluster (`--ray-address`) changes nothing here: that cluster, its addresses and its
token belong to whoever ran `ray start` (docs/scale-out.md says how to keep it on a LAN).
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def token_file(data_dir: Path) -> Path:
    """One per process: two Easels on one data dir must not replace each other's token under a live cluster."""
    return Path(data_dir) / "ray" / f"auth_token-{os.getpid()}"


def write_token(path: Path) -> Path:
    """A new random token (256 bits, as `ray get-auth-token --generate` makes), readable by this user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, stat.S_IRWXU)
    path.unlink(missing_ok=True)  # a fresh file, so the mode below is the one it is created with
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    return path


def private_cluster_env(data_dir: Path) -> dict[str, str]:
    """Set (and return) the environment a private local cluster starts with; call before importing Ray."""
    env = dict(LOOPBACK_ONLY, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(write_token(token_file(data_dir))))
    os.environ.pop("RAY_AUTH_TOKEN", None)  # it would win over the file (Ray reads the variable first)
    os.environ.update(env)
    return env


def shared_token_warning(path: Path | None = None) -> str | None:
    """Joining a cluster: a token file others on this machine can read is worth a warning (Ray makes it 0644)."""
    path = Path(path or os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"the Ray token {path} can be read by other users of this machine: chmod 600 {path}"
    return None
