"""Wildcards and dynamic prompts (Dynamic Prompts' syntax, files, always-on args and infotext)."""
from .args import ALWAYSON_NAME, MAX_GENERATIONS, WildcardArgs, alwayson_args, alwayson_value, named_args, not_built
from .draw import TemplateError, WildcardFolder
from .feature import (COMBINATORIAL_FIELD, ENABLED_FIELD, MAX_GENERATIONS_FIELD, NEGATIVE_TEMPLATE_KEY, TEMPLATE_KEY,
                      UI_FIELDS, Wildcards, fields_from_params, request_entry)

__all__ = ["ALWAYSON_NAME", "MAX_GENERATIONS", "WildcardArgs", "alwayson_args", "alwayson_value", "named_args",
           "not_built", "TemplateError", "WildcardFolder", "COMBINATORIAL_FIELD", "ENABLED_FIELD",
           "MAX_GENERATIONS_FIELD", "NEGATIVE_TEMPLATE_KEY", "TEMPLATE_KEY", "UI_FIELDS", "Wildcards",
           "fields_from_params", "request_entry"]
