"""What a ControlNet unit can pick: preprocessors (modules), models that fit the checkpoint, thresholds.

Shared by the UI and the API (`/controlnet/module_list`, `/controlnet/model_list`), so both
list the same names. A module whose name says what it is for (canny, depth, ip-adapter...)
narrows the model list to files with that word in their name, as AUTOMATIC1111's ControlNet
extension does; "none" lists every model that fits.
"""
from __future__ import annotations

from typing import Any

from .preprocessors import FACEID_MODULES, PREPROCESSORS, Preprocessor

NO_MODEL = "None"


def module_names() -> list[str]:
    return list(PREPROCESSORS)


def is_ip_adapter_module(module: str) -> bool:
    return module.lower().startswith("ip-adapter")


def model_names(controlnets, ip_adapters, unet_config: dict[str, Any] | None, module: str = "none") -> list[str]:
    """Model names for a unit: IP-Adapters for ip-adapter modules, ControlNets otherwise.

    `unet_config`: the loaded checkpoint's UNet config (only models for its architecture), or None (all).
    """
    if is_ip_adapter_module(module) and str((unet_config or {}).get("family", "")).startswith("flux"):
        from .flux_redux import names as redux_names

        from .flux_ip_adapter import names as xlabs_names

        names = redux_names(ip_adapters) + xlabs_names(ip_adapters)  # FLUX.1 Redux or XLabs' IP-Adapter
    elif is_ip_adapter_module(module):
        names = (ip_adapters.names_for(unet_config) if unet_config is not None
                 else [p.stem for p in ip_adapters.adapter_paths()])
    else:
        names = (controlnets.names_for(unet_config) if unet_config is not None
                 else [i.name for i in controlnets.all()])
    hint = PREPROCESSORS[module].default_model_hint if module in PREPROCESSORS else ""
    if hint and (not is_ip_adapter_module(module) or module in FACEID_MODULES):  # FaceID files first
        preferred = [n for n in names if hint in n.lower()]
        names = preferred + [n for n in names if n not in preferred]
    return [NO_MODEL, *names]


def thresholds(module: str) -> tuple[tuple | None, tuple | None]:
    """(label, default, minimum, maximum) for the module's threshold A and B sliders, or None."""
    preprocessor: Preprocessor | None = PREPROCESSORS.get(module)
    if preprocessor is None:
        return None, None
    return preprocessor.threshold_a, preprocessor.threshold_b
