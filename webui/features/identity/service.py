"""The identity methods' models and files: check them, apply a method to one pass's plan.

InstantID adds to the pass's controls (IdentityNet + face adapter); PhotoMaker changes the
prompt conditioning from the style-strength step on and adds its LoRA to the pass's weight
patches. The feature (identity/feature.py) calls `apply` for every pass, hires fix included,
and writes the `Identity` infotext entry; notes (several faces found) become warnings.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from ...model_manager.store import ModelStore
from ..controlnet.models import ControlNetLibrary
from .args import IdentityArgs
from .faces import FaceAnalyzer
from .files import IdentityFolders


class IdentityError(ValueError):
    user_facing = True



class IdentityService:
    def __init__(self, folders: IdentityFolders, pack: Callable[[], str], store: ModelStore | None = None):
        self.folders = folders
        self.pack = pack  # the setting identity_insightface_pack, read when needed
        self._analyzers: dict[tuple[str, str], FaceAnalyzer] = {}
        self._lock = threading.Lock()
        # the app's model store keeps the IdentityNet (a ControlNet folder in models/instantid) and the
        # PhotoMaker encoder + LoRA (kind "photomaker", one at a time: they are large)
        self.store = store if store is not None else ModelStore()
        self.identitynets = ControlNetLibrary([folders.instantid], store=self.store, kind="identitynet")
        self.store.set_limit("photomaker", 1)

    def analyzer(self) -> FaceAnalyzer:
        key = (str(self.folders.insightface), self.pack())
        with self._lock:
            if key not in self._analyzers:
                self._analyzers[key] = FaceAnalyzer(self.folders.insightface, key[1])
            return self._analyzers[key]

    def missing(self, method: str) -> list[str]:
        return self.folders.missing(method, self.pack())

    def check(self, args: IdentityArgs, model) -> None:
        """The method's model family and files, before any pass is planned; IdentityError names what is wrong."""
        if model.architecture.family != "sdxl":
            raise IdentityError(f"{args.method} works with SDXL checkpoints; {model.info.model_name} is "
                                f"{model.architecture.family}")
        missing = self.missing(args.method)
        if missing:
            raise IdentityError(f"{args.method} needs these files:\n" + "\n".join(f"- {line}" for line in missing))

    def apply(self, args: IdentityArgs, request, plan, size: tuple[int, int], notes: list[str]) -> dict[str, Any]:
        """Apply the method to one pass's `plan` (controls or prompts); returns the files for the infotext."""
        if args.method == "InstantID":
            from .instantid import prepare_instantid

            return prepare_instantid(args, plan.model, plan.controls, self.analyzer(), self.folders.adapter(),
                                     self.identitynets, self.folders.identitynet(), size[0], size[1], notes)
        from .photomaker import prepare_photomaker

        path: Path = self.folders.photomaker_file(args.method)
        analyzer = self.analyzer() if args.method == "PhotoMaker v2" else None
        return prepare_photomaker(args, request, plan, path, analyzer, notes, self.store)
