"""Identity (InstantID, PhotoMaker) as a feature of every pass, hires fix included.

Arguments come in `alwayson_scripts["identity"]["args"]`. Each pass applies the method to
its own plan: InstantID adds the IdentityNet (at the pass's size) and the face adapter to the
pass's controls, PhotoMaker fuses the face into the pass's prompt conditioning and adds its
LoRA to the pass's weight patches. So the hires pass keeps the identity.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...core.pipeline import Feature, Pass, Run
from ...core.request import FieldError
from .args import IdentityArgs, identity_infotext, parse_identity

if TYPE_CHECKING:
    from ...core.request import GenerationRequest
    from .service import IdentityService


class Identity(Feature):
    name = "identity"

    def __init__(self, service: "IdentityService"):
        self.service = service

    def parse(self, request: "GenerationRequest") -> tuple[IdentityArgs | None, list[FieldError]]:
        """The method, photos (decoded once) and strengths; None without an identity unit."""
        return parse_identity(request.alwayson())

    def begin(self, run: Run) -> None:
        args = run.args.get(self.name)
        if args is not None:
            self.service.check(args, run.model)
        run.state[self.name] = args

    def begin_pass(self, run: Run, p: Pass) -> None:
        args = run.state.get(self.name)
        if args is None:
            return
        notes: list[str] = []
        files = self.service.apply(args, p.request, p.plan, p.size, notes)
        if p is run.first:
            run.state[self.name + ".files"] = files
            run.context.warnings.extend(notes)

    def infotext(self, run: Run) -> dict[str, Any]:
        args = run.state.get(self.name)
        if args is None:
            return {}
        return {"Identity": identity_infotext(args, run.state.get(self.name + ".files", {}))}
