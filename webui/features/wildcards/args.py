"""Dynamic Prompts' always-on script arguments, as its API clients send them.

AUTOMATIC1111 passes an always-on script's controls positionally, in the order its `ui()`
returns them; Dynamic Prompts v2.17.1 returns eighteen (`ARG_NAMES`). Easel reads them by
that order, or as an object keyed by the same names (what Easel's own UI sends), and
refuses, naming the argument, those it does not do: Magic Prompt and "I'm feeling lucky"
need a language model or a web service, Jinja2 templates run code-like templates, and
"Don't generate images" makes no images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...core.request import FieldError, is_int, script_args

# the request's key: AUTOMATIC1111 names an always-on script by its title, lower-cased
ALWAYSON_NAME = "dynamic prompts v2.17.1"
ALWAYSON_PREFIX = "dynamic prompts"   # any version's title is accepted
MAX_GENERATIONS = 1000                # Dynamic Prompts' own slider maximum; also the cap for "0 = all"

ARG_NAMES = ("is_enabled", "is_combinatorial", "combinatorial_batches", "is_magic_prompt", "is_feeling_lucky",
             "is_attention_grabber", "min_attention", "max_attention", "magic_prompt_length", "magic_temp_value",
             "use_fixed_seed", "unlink_seed_from_prompt", "disable_negative_prompt", "enable_jinja_templates",
             "no_image_generation", "max_generations", "magic_model", "magic_blocklist_regex")
# switched on, these are refused (capability named)
NOT_BUILT = {"is_magic_prompt": "Magic Prompt (a prompt-writing language model)",
             "is_feeling_lucky": "I'm feeling lucky (prompts fetched from a web service)",
             "is_attention_grabber": "the attention grabber",
             "enable_jinja_templates": "Jinja2 templates",
             "no_image_generation": "Don't generate images"}


@dataclass(frozen=True)
class WildcardArgs:
    """What a request asks of the wildcards feature (None in the request: it is off)."""

    combinatorial: bool = False
    combinatorial_batches: int = 1
    max_generations: int = 0          # combinatorial: at most this many images (0: every combination)
    fixed_seed: bool = False          # every image gets the request's seed
    unlink_seed: bool = False         # random draws not tied to the image seed (not reproducible)


def alwayson_value(scripts: Any) -> tuple[str, Any] | None:
    """(key, value) of the Dynamic Prompts entry in `alwayson_scripts` (any version, any case), or None."""
    if not isinstance(scripts, dict):
        return None
    return next(((k, v) for k, v in scripts.items()
                 if isinstance(k, str) and k.strip().lower().startswith(ALWAYSON_PREFIX)), None)


def named_args(value: Any) -> dict[str, Any]:
    """Arguments by name from a positional list or an object; raises ValueError naming the problem."""
    args = script_args(value)
    if args is None:
        return {}
    if isinstance(args, dict):
        unknown = [key for key in args if key not in ARG_NAMES]
        if unknown:
            raise ValueError(f"unknown argument {unknown[0]!r} (known: {', '.join(ARG_NAMES)})")
        return dict(args)
    if not isinstance(args, list):
        raise ValueError("args must be a list in Dynamic Prompts' order or an object keyed by argument name")
    if len(args) > len(ARG_NAMES):
        raise ValueError(f"takes at most {len(ARG_NAMES)} args (got {len(args)})")
    return dict(zip(ARG_NAMES, args))


def not_built(args: dict[str, Any]) -> list[tuple[str, str]]:
    """(argument, capability) for each switched-on option Easel does not have."""
    return [(name, what) for name, what in NOT_BUILT.items() if args.get(name) not in (None, False, 0)]


def parse(value: Any, field: str) -> tuple[WildcardArgs | None, list[FieldError]]:
    """The typed arguments (None when switched off) and an error naming each bad argument."""
    try:
        args = named_args(value)
    except ValueError as exc:
        return None, [FieldError(field, str(exc))]
    errors = [FieldError(f"{field}.{name}", f"{what} is not available in Easel") for name, what in not_built(args)]
    for name in ("is_enabled", "is_combinatorial", "use_fixed_seed", "unlink_seed_from_prompt"):
        if not isinstance(args.get(name, False), bool):
            errors.append(FieldError(f"{field}.{name}", "must be true or false"))
    for name, low, high, default in (("combinatorial_batches", 1, 10, 1), ("max_generations", 0, MAX_GENERATIONS, 0)):
        number = args.get(name, default)
        if isinstance(number, float) and number.is_integer():
            number = int(number)
        if not is_int(number) or not low <= number <= high:
            errors.append(FieldError(f"{field}.{name}", f"must be a whole number from {low} to {high}"))
        args[name] = number
    if errors or not args.get("is_enabled", False):
        return None, errors
    return WildcardArgs(combinatorial=args.get("is_combinatorial", False),
                        combinatorial_batches=args["combinatorial_batches"], max_generations=args["max_generations"],
                        fixed_seed=args.get("use_fixed_seed", False),
                        unlink_seed=args.get("unlink_seed_from_prompt", False)), []


def alwayson_args(enabled: bool, combinatorial: bool = False, max_generations: int = 0,
                  combinatorial_batches: int = 1, fixed_seed: bool = False) -> dict[str, Any]:
    """The `alwayson_scripts` entry Easel's UI sends (an object keyed by Dynamic Prompts' argument names)."""
    return {"args": {"is_enabled": bool(enabled), "is_combinatorial": bool(combinatorial),
                     "combinatorial_batches": int(combinatorial_batches), "use_fixed_seed": bool(fixed_seed),
                     "max_generations": int(max_generations)}}
