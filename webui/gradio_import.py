"""Import Gradio without its type-stub rewriting: 2.3 s of every start-up.

Each time Gradio is imported, every component class it defines (85 of them) re-reads its own source
file, parses it and rewrites the matching `.pyi` stub next to it (`gradio.component_meta
.create_or_modify_pyi`). The stubs are for Gradio's own developers' editors; nothing reads them at run
time. Measured on this 2-core box: `import gradio` 4.76 s with the rewriting, 2.51 s without. There is
no setting for it, so `skip_stub_rewriting()` installs an import hook that replaces that one function
with a no-op right after its module runs, before the component modules use it.

It must run before anything imports Gradio (the server's entry point and the tests' conftest call it);
once Gradio is imported it does nothing. A Gradio without that function imports as usual.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

MODULE = "gradio.component_meta"
FUNCTION = "create_or_modify_pyi"


def _no_stub(*_args, **_kwargs) -> None:
    """Stands in for Gradio's stub writer: the .pyi files stay as installed."""


class _SkipStubRewriting(importlib.abc.MetaPathFinder):
    """Finds `gradio.component_meta` through the other finders and patches it once it has run."""

    def find_spec(self, name: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if name != MODULE:
            return None
        sys.meta_path.remove(self)  # once only, and so the lookup below finds the real module
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            if hasattr(module, FUNCTION):
                setattr(module, FUNCTION, _no_stub)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def skip_stub_rewriting() -> bool:
    """Install the hook if Gradio isn't imported yet; True when it will take effect."""
    if MODULE in sys.modules or any(isinstance(f, _SkipStubRewriting) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, _SkipStubRewriting())
    return True
