"""Extra networks in prompts: `<lora:...>` tags and textual-inversion embeddings, end to end.

`LoraNetworks` is what the prompt planner (core/prompt_plan.py) asks for: the spec of a
`<lora:>` call, the model's weight patcher, Switch/Composite denoisers and the embeddings.
`ExtraNetworks` is the feature that writes `Lora hashes`, `Lora composition` and `TI hashes`
into the infotext, for every pass's prompts (a hires prompt's own LoRAs are listed too, as
AUTOMATIC1111 does).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.extra_networks import NetworkCall
from ..core.pipeline import Feature, Run
from .lora import LoraPatcher, LoraSpec
from .lora_composition import LoraCompositeDenoiser, LoraSwitchDenoiser

if TYPE_CHECKING:
    from ..core.denoiser import CFGDenoiser, SigmaSpace
    from ..model_manager.loader import LoadedModel
    from .embeddings import Embedding, EmbeddingLibrary
    from .lora import LoraLibrary


class LoraNetworks:
    """The prompt planner's view of the LoRA and embedding libraries (core/prompt_plan.PromptNetworks)."""

    def __init__(self, loras: "LoraLibrary", embeddings: "EmbeddingLibrary"):
        self.loras = loras
        self.embedding_library = embeddings

    def load(self, call: NetworkCall) -> LoraSpec:
        if call.kind != "lora":
            raise ValueError(f"'{call.kind}' networks are not supported")
        return LoraSpec(self.loras.load(call.name), call.te, call.unet)

    def patcher(self, model: "LoadedModel") -> LoraPatcher:
        return LoraPatcher.of(model)

    def compose(self, mode: str, patcher: LoraPatcher, specs: list[LoraSpec], denoisers: list["CFGDenoiser"],
                switch_steps: int) -> "SigmaSpace":
        if mode == "Switch":
            return LoraSwitchDenoiser(patcher, specs, denoisers, switch_steps)
        return LoraCompositeDenoiser(patcher, specs, denoisers)

    def embeddings(self) -> list["Embedding"]:
        return self.embedding_library.all()

    def embedding_errors(self) -> dict[str, str]:
        """Embedding files that could not be read (name -> why), as of the last `embeddings()`."""
        return dict(self.embedding_library.errors)

    def spec_name(self, spec: LoraSpec) -> str:
        return spec.lora.name


class ExtraNetworks(Feature):
    """Infotext for the LoRAs and embeddings a request's prompts used."""

    name = "extra_networks"

    def __init__(self, networks: LoraNetworks):
        self.networks = networks

    def infotext(self, run: Run) -> dict[str, Any]:
        first = run.first.plan.prompts
        params: dict[str, Any] = {}
        files = {}
        for p in run.passes:
            for spec in p.plan.prompts.loras:
                files.setdefault(spec.lora.name, spec.lora)
        if files:
            loras = self.networks.loras
            params["Lora hashes"] = ", ".join(f"{name}: {loras.short_hash(lora)}" for name, lora in files.items())
            if len(first.loras) > 1:
                params["Lora composition"] = first.lora_mode
                if first.lora_mode == "Switch":
                    params["Lora switch steps"] = first.switch_steps
        if first.embeddings:
            library = self.networks.embedding_library
            params["TI hashes"] = ", ".join(f"{name}: {library.short_hash(e)}" for name, e in first.embeddings.items())
        return params
