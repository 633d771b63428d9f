"""What the engine calls for a request with `alwayson_scripts["identity"]`: check files, apply a method.

InstantID adds to the request's controls (IdentityNet + face adapter); PhotoMaker changes the
prompt conditioning from the style-strength step on and merges its LoRA. Either way the
infotext gets an `Identity` entry naming the method, files and strengths, and notes (several
faces found) become warnings in the result.

Hires fix is refused (ValidationError on `enable_hr`, a 422 through the API): the second pass
rebuilds its controls and prompts from the request's ControlNet units, so it would drop the
IdentityNet, the face adapter and PhotoMaker's conditioning without a word.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from ...core.request import FieldError, ValidationError
from ..controlnet.models import ControlNetLibrary
from .args import IdentityArgs, identity_infotext, parse_identity
from .faces import FaceAnalyzer
from .files import IdentityFolders


class IdentityError(ValueError):
    user_facing = True


HIRES_REFUSED = ("hires fix cannot be combined with an identity method (the second pass would drop the "
                 "identity); turn it off and upscale the result in Extras")


def check_request(request, args: IdentityArgs | None) -> None:
    """Request-level checks the args alone cannot make; `args`: the request's parsed identity args."""
    if args is not None and request.mode == "txt2img" and request.enable_hr:
        raise ValidationError([FieldError("enable_hr", HIRES_REFUSED)])


class IdentityService:
    def __init__(self, folders: IdentityFolders, pack: Callable[[], str]):
        self.folders = folders
        self.pack = pack  # the setting identity_insightface_pack, read when needed
        self._analyzers: dict[tuple[str, str], FaceAnalyzer] = {}
        self._lock = threading.Lock()
        # the IdentityNet is a ControlNet folder in models/instantid; the library's cache keeps it loaded
        self.identitynets = ControlNetLibrary([folders.instantid])
        self.photomakers: dict[tuple, Any] = {}  # the loaded PhotoMaker encoder + LoRA (features/identity/photomaker)

    def analyzer(self) -> FaceAnalyzer:
        key = (str(self.folders.insightface), self.pack())
        with self._lock:
            if key not in self._analyzers:
                self._analyzers[key] = FaceAnalyzer(self.folders.insightface, key[1])
            return self._analyzers[key]

    def missing(self, method: str) -> list[str]:
        return self.folders.missing(method, self.pack())

    def apply(self, request, plan, size: tuple[int, int], context) -> None:
        """Apply the request's identity method to `plan` (controls or prompts); no-op without one."""
        args, _ = parse_identity(request.alwayson_scripts)
        if args is None:
            return
        check_request(request, args)
        model = plan.model
        if model.architecture.family != "sdxl":
            raise IdentityError(f"{args.method} works with SDXL checkpoints; {model.info.model_name} is "
                                f"{model.architecture.family}")
        missing = self.missing(args.method)
        if missing:
            raise IdentityError(f"{args.method} needs these files:\n" + "\n".join(f"- {line}" for line in missing))
        notes: list[str] = []
        files = self._apply(args, request, plan, size, notes)
        context.extra_params["Identity"] = identity_infotext(args, files)
        context.warnings.extend(notes)

    def _apply(self, args: IdentityArgs, request, plan, size: tuple[int, int], notes: list[str]) -> dict[str, Any]:
        if args.method == "InstantID":
            from .instantid import prepare_instantid

            return prepare_instantid(args, plan.model, plan.controls, self.analyzer(), self.folders.adapter(),
                                     self.identitynets, self.folders.identitynet(), size[0], size[1], notes)
        from .photomaker import prepare_photomaker

        path: Path = self.folders.photomaker_file(args.method)
        analyzer = self.analyzer() if args.method == "PhotoMaker v2" else None
        return prepare_photomaker(args, request, plan, path, analyzer, notes, self.photomakers)
