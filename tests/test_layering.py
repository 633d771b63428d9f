"""Layering rules that must not rely on goodwill.

core/ and model_manager/ hold the engine; they never import the UI toolkit, the web
framework, or the ui/ and api/ packages. Importing any module has no side effects
(no threads, no argv parsing).
"""
import ast
import importlib
import pkgutil
import sys
import threading
from pathlib import Path

import webui

WEBUI = Path(webui.__file__).parent
FORBIDDEN = ("gradio", "fastapi", "uvicorn", "starlette", "webui.ui", "webui.api", "webui.server")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    package = "webui." + ".".join(path.relative_to(WEBUI).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module or "")
    return names


def test_engine_never_imports_ui_or_web_layers():
    offenders = []
    for folder in ("core", "model_manager"):
        for path in (WEBUI / folder).rglob("*.py"):
            for name in _imports(path):
                if name.startswith(FORBIDDEN):
                    offenders.append(f"{path.relative_to(WEBUI)} imports {name}")
    assert not offenders, offenders


def test_importing_every_module_is_inert(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["--definitely-not-a-flag"])
    threads_before = threading.active_count()
    for module in pkgutil.walk_packages([str(WEBUI)], prefix="webui."):
        if module.name.endswith("__main__"):
            continue
        importlib.import_module(module.name)
    assert threading.active_count() == threads_before


def test_core_imports_no_feature():
    """Features plug into the engine through core/pipeline.Feature; the engine names none of them.

    Type-only imports count too: a core module that needs a feature's type is shaped around it.
    """
    offenders = []
    for folder in ("core", "families"):
        for path in (WEBUI / folder).rglob("*.py"):
            for name in _imports(path):
                if name.startswith("webui.features"):
                    offenders.append(f"{path.relative_to(WEBUI)} imports {name}")
    assert not offenders, offenders


# what an adapter may build on: the math of schedules and parameterisations, and the key tables of
# single files (the adapter owns its layout). None of them imports the engine, a feature or a family.
FAMILY_BUILDING_BLOCKS = ("webui.core.schedules", "webui.core.parameterisation", "webui.model_manager.convert")


def test_families_stand_alone():
    """A family adapter describes a model; it needs neither the engine, the model manager nor a feature."""
    offenders = [f"{path.name} imports {name}" for path in (WEBUI / "families").rglob("*.py")
                 for name in _imports(path)
                 if name.startswith(("webui.core", "webui.model_manager", "webui.features"))
                 and name not in FAMILY_BUILDING_BLOCKS]
    assert not offenders, offenders
    for block in FAMILY_BUILDING_BLOCKS:
        path = WEBUI.parent / (block.replace(".", "/") + ".py")
        engine = [name for name in _imports(path)
                  if name.startswith(("webui.features", "webui.families", "webui.core.processing",
                                      "webui.core.pipeline", "webui.model_manager.manager"))]
        assert not engine, f"{block} imports {engine}"
