"""Per-family defaults in the generation tabs, as Forge's presets: switching to a checkpoint of another
family sets size, steps, CFG, sampler and schedule to that family's (`Family.ui_defaults`), and what the
user had set for the family left behind is remembered in the page's session, so switching back restores it.

Switching between checkpoints of the same family changes nothing. The values come from the family
adapter; this module only moves them between the page and a per-session memory.
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from .. import families

# request fields a family preset sets, in the order the components are wired
PRESET_FIELDS = ("width", "height", "steps", "cfg_scale", "sampler_name", "scheduler")

Memory = dict[str, Any]  # {"family": name of the family the tabs show, "values": {family: [values]}}


def family_defaults(family: str) -> dict[str, Any]:
    try:
        return dict(families.get(family).ui_defaults)
    except ValueError:
        return {}


def switch_values(memory: Memory | None, new_family: str | None, fields: list[tuple[str, str]],
                  current: list[Any]) -> tuple[Memory, list[Any] | None]:
    """(memory, the tabs' new values or None to leave them) when the tabs go from memory["family"] to
    `new_family`; `fields` names each value (tab, field), `current` holds what the page shows now."""
    memory = {"family": (memory or {}).get("family"), "values": dict((memory or {}).get("values") or {})}
    old = memory["family"]
    if new_family is None or new_family == old:
        memory["family"] = new_family or old
        return memory, None
    if old is not None:
        memory["values"][old] = list(current)
    memory["family"] = new_family
    remembered = memory["values"].get(new_family)
    if remembered is not None:
        return memory, list(remembered)
    defaults = family_defaults(new_family)
    return memory, [defaults.get(field, value) for (_, field), value in zip(fields, current)]


def wire_family_presets(easel: Any, checkpoint: gr.Dropdown, tabs: list[Any], switch: Any, status: Any) -> None:
    """On a checkpoint switch: note the family the tabs show, run `switch` (which loads the new checkpoint
    and reports in `status`), then set the tabs' preset fields for the new family."""
    fields: list[tuple[str, str]] = []
    components: list[gr.components.Component] = []
    for controls in tabs:
        for field in PRESET_FIELDS:
            if field in controls.inputs:
                fields.append((controls.prefix, field))
                components.append(controls.inputs[field])
    memory = gr.State(None)

    def current_family() -> str | None:
        model = easel.models.current
        return model.architecture.family if model is not None else None

    def before(state: Memory | None) -> Memory:
        state = dict(state or {})
        state["family"] = state.get("family") or current_family()
        return state

    def after(state: Memory | None, *values: Any):
        state, new = switch_values(state, current_family(), fields, list(values))
        if new is None:
            return (state, *(gr.update() for _ in values))
        return (state, *new)

    checkpoint.input(before, memory, memory, api_name=False, queue=False) \
        .then(switch, checkpoint, status, concurrency_limit=None, api_name=False) \
        .then(after, [memory, *components], [memory, *components], api_name=False)
