"""Bundled extensions use only the public extension API, and that API says what it offers."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = "webui.extensions.api"


def webui_imports(source: str, filename: str) -> list[str]:
    """Every module of `webui` a Python file imports (absolute imports and import_module("webui...") calls)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "webui"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "webui":
            # `from webui.extensions import api` imports webui.extensions.api; `from webui import x` imports webui.x
            found += [f"{node.module}.{alias.name}" for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and node.args[0].value.startswith("webui")
              and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")):
            found.append(node.args[0].value)
    return found


def private_imports(source: str, filename: str = "<test>") -> list[str]:
    return [name for name in webui_imports(source, filename) if name != PUBLIC and not name.startswith(PUBLIC + ".")]


def test_the_scanner_catches_private_imports():
    assert private_imports("from webui.extensions import api as easel\nimport webui.extensions.api\n"
                           "from webui.extensions.api import hookimpl\n") == []
    assert private_imports("from webui.core.seeds import resolve_seed\n") == ["webui.core.seeds.resolve_seed"]
    assert private_imports("import webui.core.engine as e\n") == ["webui.core.engine"]
    assert private_imports("from webui.extensions import manager\n") == ["webui.extensions.manager"]
    assert private_imports("def f():\n    from webui import app\n") == ["webui.app"]
    assert private_imports("import importlib\nimportlib.import_module('webui.core.seeds')\n") == ["webui.core.seeds"]
    assert private_imports("from .axes import AXES\nimport numpy\n") == []


BUNDLED_FILES = sorted((ROOT / "extensions").glob("*/**/*.py"))


@pytest.mark.parametrize("path", BUNDLED_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_bundled_extensions_import_only_the_public_api(path):
    offending = private_imports(path.read_text(encoding="utf-8"), str(path))
    assert offending == [], f"{path.relative_to(ROOT)} imports {offending}; use {PUBLIC} (docs/extensions.md)"


def test_bundled_extensions_exist_for_the_scan():
    # If the glob above found nothing, the scan would pass vacuously.
    assert len(BUNDLED_FILES) >= 3


def test_api_lists_what_it_exports_and_its_version_history():
    from webui.extensions import api

    assert all(hasattr(api, name) for name in api.__all__)
    assert api.API_VERSION.split(".")[0] == "2"
    guide = (ROOT / "docs" / "extensions.md").read_text()
    assert f"**{api.API_VERSION}**" in guide, "docs/extensions.md must describe the current API version"
    assert api.resolve_seed(42) == 42 and 0 <= api.resolve_seed(-1) <= api.MAX_SEED


def test_every_hook_parameter_has_a_real_type():
    """No hook hands over `Any`: every parameter and return is annotated with a type that resolves."""
    import inspect
    import typing

    import fastapi
    import gradio
    import torch
    from PIL import Image

    from webui.app import Easel
    from webui.extensions import api, hookspecs

    names = {"gr": gradio, "torch": torch, "FastAPI": fastapi.FastAPI, "Image": Image, "Easel": Easel,
             **{name: getattr(api, name) for name in api.__all__}}
    for hook in hookspecs.HOOK_NAMES:
        spec = getattr(hookspecs, hook)
        signature = inspect.signature(spec)
        for name, parameter in signature.parameters.items():
            assert parameter.annotation not in (inspect.Parameter.empty, "Any"), f"{hook}({name}) is untyped"
        assert signature.return_annotation is not inspect.Signature.empty, f"{hook} has no return type"
        hints = typing.get_type_hints(spec, globalns={**vars(hookspecs), **names})
        assert all(hint is not typing.Any for hint in hints.values()), f"{hook}: {hints}"
    # engine objects are handed over as the API's read-only views, never as the engine's own classes
    hints = typing.get_type_hints(hookspecs.model_loaded, globalns={**vars(hookspecs), **names})
    assert hints["model"] is api.ModelView


def _pipeline_script():
    from dataclasses import dataclass
    from typing import Literal

    from webui.extensions import api

    @dataclass(frozen=True)
    class DemoArgs:
        mode: Literal["fast", "slow"] = api.arg("fast", label="Mode")
        count: int = api.arg(3, label="Count", minimum=1, maximum=10)
        strength: float = api.arg(0.5)
        note: str = api.arg("")
        enabled: bool = api.arg(True)

    class Demo(api.Script):
        name, title, Args = "demo", "Demo script", DemoArgs

    return Demo()


def test_script_arguments_come_from_the_args_dataclass():
    from webui.extensions import api

    script = _pipeline_script()
    assert [(s.name, s.kind, s.default) for s in script.arg_specs()] == [
        ("mode", "choice", "fast"), ("count", "int", 3), ("strength", "float", 0.5), ("note", "str", ""),
        ("enabled", "bool", True)]
    assert script.arg_specs()[0].choices == ("fast", "slow")
    # AUTOMATIC1111's positional list (short lists keep the defaults), Easel's named object, None = default
    assert script.parse_args(["slow", 4.0]) == script.Args(mode="slow", count=4)
    assert script.parse_args({"strength": 1, "note": None}) == script.Args(strength=1.0)
    for bad, name in (({"mode": "medium"}, "mode"), ({"count": 2.5}, "count"), ({"count": 11}, "count"),
                      ({"enabled": "yes"}, "enabled"), ({"nope": 1}, "nope"), ({"note": 3}, "note")):
        with pytest.raises(api.ScriptArgsError) as caught:
            script.parse_args(bad)
        assert caught.value.name == name
    with pytest.raises(api.ScriptArgsError, match="takes 5 arguments"):
        script.parse_args([1] * 6)


def test_script_info_reads_the_fields_without_building_any_ui():
    """The API used to build each script's ui() in a throwaway gr.Blocks to learn its argument names."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from tests.test_extension_contract import _pipeline_script\n"
        "from webui.api import scripts as script_api\n"
        "from webui.extensions.scripts import RegisteredScript\n"
        "registry = {}\n"
        "registry['demo'] = RegisteredScript(_pipeline_script(), 'demo-ext', registry)\n"
        "info = script_api.script_info(registry)\n"
        "assert [a['name'] for a in info[0]['args']] == ['mode', 'count', 'strength', 'note', 'enabled'], info\n"
        "assert info[0]['args'][1] == {'name': 'count', 'label': 'Count', 'value': 3, 'minimum': 1, 'maximum': 10,\n"
        "                              'step': None, 'choices': None}, info\n"
        "assert script_api.named_args(registry['demo'], ['slow', 2], 'script_args') == {'mode': 'slow', 'count': 2}\n"
        "assert 'gradio' not in sys.modules, 'building script-info imported gradio'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
