"""One record of every loaded model, of every kind, under one memory budget.

Each kind of model used to keep its own cache (checkpoints by count, ControlNets three at a
time, image encoders for ever), so nothing knew how much memory Easel held in total. The
store keeps every loaded model as an entry keyed by (kind, key) with its measured size in
system RAM and on the accelerator, counted separately, and evicts the least recently used
entry first when either budget is exceeded. A kind may also keep a count limit (the setting
`sd_checkpoints_limit` for checkpoints). What the running job uses is never evicted: entries
can be pinned, and everything fetched inside `in_use()` stays pinned until it exits.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Mapping, NamedTuple, TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")
GB = 1024 ** 3
RAM_FRACTION = 0.5      # automatic budget: half the system memory
DEVICE_FRACTION = 0.6   # automatic budget: leave 40% of the GPU for activations while sampling
Limit = Callable[[], "int | None"]  # None: no limit


class Sizes(NamedTuple):
    """Bytes of parameters and buffers in system RAM and on the accelerator."""

    ram: int = 0
    device: int = 0


class EntryStatus(NamedTuple):
    kind: str
    key: Hashable
    ram_bytes: int
    device_bytes: int
    last_used: float   # time.time() of the last get
    pinned: bool


@dataclass(eq=False)
class _Entry:
    kind: str
    key: Hashable
    value: Any
    measure: Callable[[Any], Sizes]
    on_evict: Callable[[Any], None] | None
    sizes: Sizes = Sizes()
    last_used: float = field(default_factory=time.time)
    pins: int = 0


# ---- measuring --------------------------------------------------------------------------------

_LEAVES = (str, bytes, int, float, bool, type(None), Path, torch.device, torch.dtype)


def _tensors(obj: Any, seen: set[int], depth: int) -> Iterator[torch.Tensor]:
    """Tensors reachable from `obj`: modules' parameters and buffers, containers, plain objects' attributes."""
    if id(obj) in seen or isinstance(obj, _LEAVES):
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    if isinstance(obj, torch.nn.Module):
        yield from obj.parameters()
        yield from obj.buffers()
        return
    if depth <= 0:
        return
    if isinstance(obj, Mapping):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    elif hasattr(obj, "__dict__"):
        children = list(vars(obj).values())
    else:
        return
    for child in children:
        yield from _tensors(child, seen, depth - 1)


def measure(obj: Any, depth: int = 6) -> Sizes:
    """Sum of numel * element_size by where tensors live: "cpu" is RAM, "meta" nothing, the rest the device.

    Tensors sharing memory (tied weights, the same module reached twice) count once.
    """
    ram = device = 0
    counted: set[tuple] = set()
    for tensor in _tensors(obj, set(), depth):
        kind = tensor.device.type
        if kind == "meta":
            continue
        ident = (str(tensor.device), tensor.data_ptr(), tensor.numel(), tensor.dtype)
        if ident in counted:
            continue
        counted.add(ident)
        size = tensor.numel() * tensor.element_size()
        if kind == "cpu":
            ram += size
        else:
            device += size
    return Sizes(ram, device)


# ---- budgets ------------------------------------------------------------------------------------


def automatic_ram_budget() -> int:
    import psutil

    return int(psutil.virtual_memory().total * RAM_FRACTION)


def automatic_device_budget(device: torch.device) -> int | None:
    """A fraction of the CUDA device's memory; None (no budget) without CUDA."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(device).total_memory * DEVICE_FRACTION)


def setting_budget(settings, key: str, automatic: Callable[[], int | None]) -> Limit:
    """A budget read from a GB setting at each check (0 = `automatic`), so changing it applies at once."""
    def budget() -> int | None:
        value = float(settings.get(key) or 0)
        return int(value * GB) if value > 0 else automatic()
    return budget


# ---- the store ----------------------------------------------------------------------------------


class ModelStore:
    """Loaded models of every kind, least recently used first out when a budget is exceeded.

    `ram_budget` / `device_budget` return bytes (None: unlimited) and are asked at each check.
    Evicting drops the store's reference and calls the entry's `on_evict(value)`; callers that
    still hold the value keep it alive, which is why the running job pins what it uses.
    """

    def __init__(self, ram_budget: Limit | None = None, device_budget: Limit | None = None):
        self.ram_budget: Limit = ram_budget or (lambda: None)
        self.device_budget: Limit = device_budget or (lambda: None)
        self._entries: OrderedDict[tuple[str, Hashable], _Entry] = OrderedDict()  # oldest first
        self._limits: dict[str, Limit] = {}
        self._lock = threading.RLock()
        self._loading: dict[tuple[str, Hashable], threading.Lock] = {}
        self._scopes = threading.local()
        self.after_jobs: list[Callable[[], None]] = []  # run when the outermost in_use() ends (memory modes park)
        self.load_listeners: list[Callable[[str, Hashable, Any], None]] = []  # (kind, key, value) after each load

    # ---- configuration ----

    def set_limit(self, kind: str, limit: int | Limit | None) -> None:
        """At most `limit` entries of `kind` (besides the budgets); None removes the limit."""
        with self._lock:
            if limit is None:
                self._limits.pop(kind, None)
            else:
                self._limits[kind] = limit if callable(limit) else (lambda n=limit: n)

    # ---- getting ----

    def get(self, kind: str, key: Hashable, load: Callable[[], T], *, measure: Callable[[Any], Sizes] = measure,
            on_evict: Callable[[T], None] | None = None, scoped: bool = True, estimate: Sizes | None = None) -> T:
        """The entry's value, loading it on a miss (one load at a time per key; other keys load meanwhile).

        `scoped`: inside `in_use()`, keep the entry pinned until the scope ends. The entry just
        loaded is never the one evicted to make room for itself. `estimate`: what the load will
        need, so room is made before it starts (the peak of a load is not after it).
        """
        ident = (kind, key)
        with self._lock:
            entry = self._hit(ident, scoped)
            if entry is not None:
                return entry.value
            loading = self._loading.setdefault(ident, threading.Lock())
        with loading:
            with self._lock:
                entry = self._hit(ident, scoped)
                if entry is not None:
                    return entry.value
            if estimate is not None:
                self.make_room_for(estimate)
            try:
                value = load()
            finally:
                with self._lock:
                    if self._loading.get(ident) is loading:
                        del self._loading[ident]
            entry = _Entry(kind, key, value, measure, on_evict, measure(value))
            with self._lock:
                self._entries[ident] = entry
                if scoped:
                    self._scope_pin(entry)
                evicted = self._select(protect=entry)
        self._finish(evicted)
        for listener in list(self.load_listeners):
            try:
                listener(kind, key, value)
            except Exception:  # a listener must never break loading
                log.exception("load listener failed for %s %s", kind, key)
        return value

    def peek(self, kind: str, key: Hashable) -> Any | None:
        """The value if loaded, without counting it as a use."""
        with self._lock:
            entry = self._entries.get((kind, key))
            return None if entry is None else entry.value

    def keys(self, kind: str) -> list[Hashable]:
        """Keys of `kind`, least recently used first."""
        with self._lock:
            return [e.key for e in self._entries.values() if e.kind == kind]

    def entries(self) -> list[EntryStatus]:
        """What is loaded, least recently used first: the one record of every kind."""
        with self._lock:
            return [EntryStatus(e.kind, e.key, e.sizes.ram, e.sizes.device, e.last_used, e.pins > 0)
                    for e in self._entries.values()]

    def totals(self) -> Sizes:
        with self._lock:
            return Sizes(sum(e.sizes.ram for e in self._entries.values()),
                         sum(e.sizes.device for e in self._entries.values()))

    # ---- in use ----

    def pin(self, kind: str, key: Hashable) -> None:
        """Keep the entry through budget and count eviction until `unpin` (pins are counted)."""
        with self._lock:
            entry = self._entries.get((kind, key))
            if entry is not None:
                entry.pins += 1

    def unpin(self, kind: str, key: Hashable) -> None:
        with self._lock:
            entry = self._entries.get((kind, key))
            if entry is not None and entry.pins > 0:
                entry.pins -= 1
        self.trim()

    @contextmanager
    def pinned(self, kind: str, key: Hashable) -> Iterator[None]:
        self.pin(kind, key)
        try:
            yield
        finally:
            self.unpin(kind, key)

    @contextmanager
    def in_use(self) -> Iterator[None]:
        """Everything this thread gets from the store inside the block stays loaded until it ends (a job)."""
        stack = self._scopes.__dict__.setdefault("stack", [])
        pinned: list[_Entry] = []
        stack.append(pinned)
        try:
            yield
        finally:
            stack.pop()
            with self._lock:
                for entry in pinned:
                    entry.pins -= 1
            if not stack:
                for after in list(self.after_jobs):
                    try:
                        after()
                    except Exception:  # e.g. moving weights back failed: the job's result stands
                        log.exception("after-job step failed")
            self.trim()

    # ---- evicting ----

    def remeasure(self, kind: str, key: Hashable) -> None:
        """Measure again after the value moved between RAM and the device (or grew); then keep the budgets."""
        with self._lock:
            entry = self._entries.get((kind, key))
            if entry is None:
                return
            entry.sizes = entry.measure(entry.value)
        self.trim()

    def trim(self) -> None:
        """Evict until every budget and count limit holds (as far as pins allow)."""
        with self._lock:
            evicted = self._select(protect=None)
        self._finish(evicted)

    def make_room(self, kind: str, count: int) -> None:
        """Leave at most `count` unpinned entries of `kind`, evicting the least recently used (before a load)."""
        with self._lock:
            candidates = [e for e in self._entries.values() if e.kind == kind]
            excess = len(candidates) - max(count, 0)
            evicted = [e for e in candidates if e.pins == 0][:max(excess, 0)]
            for entry in evicted:
                del self._entries[(entry.kind, entry.key)]
        self._finish(evicted)

    def make_room_for(self, sizes: Sizes) -> None:
        """Evict, least recently used first, until `sizes` more would fit in both budgets (as pins allow)."""
        with self._lock:
            evicted = self._select(protect=None, incoming=sizes)
        self._finish(evicted)

    def evict(self, kind: str, key: Hashable) -> bool:
        """Drop one entry now, pinned or not (an explicit unload); True if it was loaded."""
        return bool(self.evict_where(kind, lambda k: k == key))

    def evict_where(self, kind: str, predicate: Callable[[Hashable], bool] = lambda key: True) -> int:
        """Drop every entry of `kind` whose key matches (e.g. older versions of a changed file)."""
        with self._lock:
            evicted = [e for e in self._entries.values() if e.kind == kind and predicate(e.key)]
            for entry in evicted:
                del self._entries[(entry.kind, entry.key)]
        self._finish(evicted)
        return len(evicted)

    # ---- internals ----

    def _hit(self, ident: tuple[str, Hashable], scoped: bool) -> _Entry | None:
        entry = self._entries.get(ident)
        if entry is not None:
            self._entries.move_to_end(ident)
            entry.last_used = time.time()
            if scoped:
                self._scope_pin(entry)
        return entry

    def _scope_pin(self, entry: _Entry) -> None:
        stack = getattr(self._scopes, "stack", None)
        if stack and entry not in stack[-1]:
            stack[-1].append(entry)
            entry.pins += 1

    def _select(self, protect: _Entry | None, incoming: Sizes = Sizes()) -> list[_Entry]:
        """Remove (under the lock) and return what must go: count limits first, then each budget, oldest first.

        `incoming`: bytes about to be loaded, counted as if they were already in the store.
        """
        evicted: list[_Entry] = []

        def evictable() -> list[_Entry]:
            return [e for e in self._entries.values() if e.pins == 0 and e is not protect]

        def drop(entry: _Entry) -> None:
            del self._entries[(entry.kind, entry.key)]
            evicted.append(entry)

        for kind, limit in self._limits.items():
            allowed = limit()
            if allowed is None:
                continue
            excess = sum(e.kind == kind for e in self._entries.values()) - max(int(allowed), 0)
            for entry in [e for e in evictable() if e.kind == kind][:max(excess, 0)]:
                drop(entry)
        for part, budget in ((0, self.ram_budget), (1, self.device_budget)):
            allowed = budget()
            if allowed is None:
                continue
            total = sum(e.sizes[part] for e in self._entries.values()) + incoming[part]
            for entry in evictable():
                if total <= allowed:
                    break
                if entry.sizes[part]:
                    total -= entry.sizes[part]
                    drop(entry)
            if total > allowed:
                log.info("models in use need %.2f GB of %s, over the %.2f GB budget", total / GB,
                         "RAM" if part == 0 else "device memory", allowed / GB)
        return evicted

    def _finish(self, evicted: list[_Entry]) -> None:
        """Run the evicted entries' cleanup outside the lock, then give freed device memory back."""
        for entry in evicted:
            log.debug("evicting %s %s", entry.kind, entry.key)
            if entry.on_evict is not None:
                try:
                    entry.on_evict(entry.value)
                except Exception:  # cleanup must never break the load that made room
                    log.exception("cleanup of evicted %s %s failed", entry.kind, entry.key)
            entry.value = None
        if any(e.sizes.device for e in evicted):
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
