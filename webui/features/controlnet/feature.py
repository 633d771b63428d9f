"""ControlNet, T2I-Adapter and IP-Adapter units as a feature of every pass.

Units come in `alwayson_scripts["controlnet"]["args"]` (AUTOMATIC1111's ControlNet extension
names); each pass gets its own `Controls` at its own size (the hires pass detects its maps
again at the larger size), the IP-Adapter attention is installed only while a pass samples,
and the infotext gets one `ControlNet N` key per unit.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager

from ...core.pipeline import Feature, Pass, Run
from ...core.request import FieldError
from .apply import Controls, build_controls
from .units import SCRIPT, ControlUnit, parse_units

if TYPE_CHECKING:
    from ...core.request import GenerationRequest
    from ..ip_adapter import IPAdapterLibrary
    from .models import ControlNetLibrary


class ControlNet(Feature):
    name = "controlnet"

    def __init__(self, controlnets: "ControlNetLibrary", ip_adapters: "IPAdapterLibrary", annotators: Path):
        self.controlnets = controlnets
        self.ip_adapters = ip_adapters
        self.annotators = annotators

    def parse(self, request: "GenerationRequest") -> tuple[list[ControlUnit] | None, list[FieldError]]:
        """The enabled units (None: no unit on), parsed once per request."""
        units, errors = parse_units(request.alwayson())
        if not errors:
            errors = list(self._missing_models(units))
        return (units if any(u.enabled for u in units) else None), errors

    def _missing_models(self, units: list[ControlUnit]):
        """A unit naming a model that is not installed: a 422 on its `model` field before anything is queued."""
        for index, unit in enumerate(units):
            if not unit.enabled or unit.model.strip().lower() in ("", "none"):
                continue
            library = self.ip_adapters if unit.is_ip_adapter else self.controlnets
            try:
                library.find(unit.model)
            except LookupError as exc:
                yield FieldError(f"alwayson_scripts.{SCRIPT}.args[{index}].model", str(exc))

    def begin(self, run: Run) -> None:
        run.state[self.name] = run.args.get(self.name)

    def begin_pass(self, run: Run, p: Pass) -> None:
        """Every pass gets its own Controls (features such as InstantID add to it), built at its size."""
        units = run.state.get(self.name)
        if not units:
            p.plan.controls = Controls()
            return
        width, height = p.size
        if p is run.first:
            controls = build_controls(units, p.plan.model, self.controlnets, self.ip_adapters, self.annotators,
                                      width, height, p.source_image)
            run.context.warnings.extend(controls.warnings)  # e.g. several faces in a FaceID unit's image
            # the units' IP-Adapter, before any other feature adds to it: later passes start from this
            run.state[self.name + ".ip_adapter"] = (controls.ip_adapter, list(controls.ip_adapter.applications)) \
                if controls.ip_adapter is not None else None
        else:  # control maps again at the new size; the IP-Adapter images are the same ones
            controls = build_controls(units, p.plan.model, self.controlnets, self.ip_adapters, self.annotators,
                                      width, height, None, self._reused_ip_adapter(run))
        p.plan.controls = controls
        if controls.denoiser_edit is not None:  # FLUX.1 Redux: image tokens after the prompt's
            p.plan.prompts.denoiser_edits.append(controls.denoiser_edit)

    def _reused_ip_adapter(self, run: Run) -> Any:
        saved = run.state.get(self.name + ".ip_adapter")
        if saved is None:
            return None
        patch, applications = saved
        return type(patch)(patch.unet, list(applications))

    def installed(self, run: Run, p: Pass) -> ContextManager[Any]:
        controls = p.plan.controls
        return controls.installed() if controls is not None else nullcontext()

    def infotext(self, run: Run) -> dict[str, Any]:
        controls = run.first.plan.controls
        return dict(controls.params) if controls is not None else {}
