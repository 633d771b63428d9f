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
    assert api.API_VERSION.split(".")[0] == "1"
    guide = (ROOT / "docs" / "extensions.md").read_text()
    assert f"**{api.API_VERSION}**" in guide, "docs/extensions.md must describe the current API version"
    assert api.resolve_seed(42) == 42 and 0 <= api.resolve_seed(-1) <= api.MAX_SEED
