"""/easel/v1/checkpoints: what is remembered for each checkpoint, read and changed over HTTP.

AUTOMATIC1111's API has one global VAE, one global weight storage (Forge's too) and no per-
checkpoint choices at all. Easel remembers three per checkpoint (model_manager/
checkpoint_preferences.py): the preferred VAE, the VAE / text encoder files (Forge's modules) and
the weight storage. `GET` lists them with where the weight storage in force comes from; `PATCH`
changes any of them, all or none, and the checkpoint's next load uses them (a loaded checkpoint
whose storage changed is reloaded by its next generation, as the Models tab says).
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from ..model_manager.lookup import ModelNotFound
from ..model_manager.manager import CHECKPOINT_STORAGES, KIND, WeightStorageError
from ..model_manager.registry import CheckpointInfo
from ..model_manager.vae import AUTOMATIC
from .context import ApiContext
from .errors import ApiError, invalid

FIELDS = ("weight_storage", "vae", "modules")


def build_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/easel/v1/checkpoints", tags=["checkpoints"])
    easel = ctx.easel
    models = easel.models

    def describe(info: CheckpointInfo) -> dict[str, Any]:
        storage, source = models.weight_storage_source(info.name)
        loaded = models.store.peek(KIND, info.name)
        vae = easel.vaes.preference(info.name) if easel.vaes is not None else None
        return {
            "name": info.name, "title": models.registry.title(info),
            "weight_storage": storage if source == "checkpoint" else AUTOMATIC,  # its own choice
            "weight_storage_in_force": storage, "weight_storage_from": source,
            "weight_storage_choices": list(CHECKPOINT_STORAGES),
            "vae": vae or AUTOMATIC, "modules": models.module_choices.preference(info.name),
            "loaded": loaded is not None,
            "loaded_weight_storage": loaded.weight_storage if loaded is not None else None,
        }

    def find(name: str) -> CheckpointInfo:
        try:
            return models.find(name)
        except ModelNotFound as exc:
            raise ApiError(404, str(exc)) from exc

    @router.get("")
    def list_checkpoints() -> list[dict[str, Any]]:
        """Every installed checkpoint with its remembered choices."""
        return [describe(info) for info in models.checkpoints()]

    @router.get("/{name:path}")
    def get_checkpoint(name: str) -> dict[str, Any]:
        return describe(find(name))

    @router.patch("/{name:path}")
    def change_checkpoint(name: str, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        """Change `weight_storage` (Automatic or null follows the setting), `vae` (a file; "None": the baked-in
        one; "Automatic" or null forgets) and `modules` (VAE / text encoder files; [] forgets). All are checked
        before any is saved."""
        info = find(name)
        checkpoint = info.name
        unknown = [key for key in body if key not in FIELDS]
        if unknown:
            raise invalid(unknown[0], f"not a per-checkpoint choice; these are: {', '.join(FIELDS)}")
        if "vae" in body:
            vae = body["vae"]
            if vae is not None and not isinstance(vae, str):
                raise invalid("vae", "expected a VAE file name, None or Automatic")
            try:
                easel.vaes.check(vae)
            except (LookupError, ValueError) as exc:
                raise invalid("vae", str(exc)) from exc
        if "modules" in body:
            try:
                models.module_choices.resolve_names(body["modules"])
            except (LookupError, ValueError) as exc:
                raise invalid("modules", str(exc).split(": ", 1)[-1]) from exc
        if "weight_storage" in body:  # saved first: it is the last check (NF4 needs bitsandbytes)
            try:
                models.set_weight_storage(checkpoint, body["weight_storage"])
            except WeightStorageError as exc:
                raise invalid("weight_storage", str(exc).removeprefix("weight_storage: ")) from exc
        if "vae" in body:
            easel.vaes.set_preference(checkpoint, body["vae"])
        if "modules" in body:
            models.module_choices.set_preference(checkpoint, body["modules"])
        return describe(info)

    return router
