"""Extensions: hooks in order, isolation of broken extensions, install/update/uninstall with real git."""
import json
import os
import subprocess
import textwrap
import threading
from http.server import HTTPServer, SimpleHTTPRequestHandler
from pathlib import Path

import httpx
import numpy as np
import pytest

from webui.core.request import GenerationRequest, ValidationError
from webui.extensions.manager import ExtensionError, ExtensionManager
from webui.extensions.runtime import HookRunner
from webui.settings import SettingsStore

from conftest import make_easel, start_server

RECORDER = '''
from dataclasses import replace

from webui.extensions import api as easel

CALLS = []

@easel.hookimpl
def model_loaded(model):
    CALLS.append(("model_loaded", model.name))

@easel.hookimpl
def before_process(request, context):
    CALLS.append(("before_process", request.prompt))
    return replace(request, prompt=request.prompt + ", recorded")

@easel.hookimpl
def process(request, context):
    CALLS.append(("process", context.plan.seed, context.model.name))

@easel.hookimpl
def extra_noise(noise, request):
    CALLS.append(("extra_noise", tuple(noise.shape)))

@easel.hookimpl
def process_batch(batch_index, seeds):
    CALLS.append(("process_batch", batch_index, tuple(seeds)))

@easel.hookimpl
def before_cfg(step):
    CALLS.append(("before_cfg", step.index, tuple(step.x.shape), tuple(step.embeds.shape)))

@easel.hookimpl
def after_cfg(step):
    CALLS.append(("after_cfg", step.index, tuple(step.prediction.shape)))

@easel.hookimpl
def step_end(step):
    CALLS.append(("step_end", step.index, tuple(step.latents.shape)))

@easel.hookimpl
def before_image_saved(image, params, request):
    CALLS.append(("before_image_saved", image.size, params["Seed"]))
    params["Recorded by"] = "recorder"

@easel.hookimpl
def image_saved(path, infotext):
    CALLS.append(("image_saved", path.endswith(".png"), "Recorded by: recorder" in infotext))

@easel.hookimpl
def postprocess(request, result):
    CALLS.append(("postprocess", len(result.images)))
'''


def write_extension(folder: Path, name: str, code: str, manifest: dict | None = None, files: dict | None = None) -> Path:
    path = folder / name
    path.mkdir(parents=True, exist_ok=True)
    values = {"name": name, "version": "1.0", "api_version": "2", "entry": "extension.py", **(manifest or {})}
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    (path / "extension.toml").write_text("\n".join(lines) + "\n")
    (path / "extension.py").write_text(textwrap.dedent(code))
    for relative, content in (files or {}).items():
        (path / relative).parent.mkdir(parents=True, exist_ok=True)
        (path / relative).write_text(content)
    return path


def module_of(name: str):
    import sys

    return sys.modules[f"easel_extensions.{name.replace('-', '_')}.extension"]


@pytest.fixture
def ext_dir(tmp_path):
    return tmp_path / "extensions"


def test_every_hook_fires_in_order_with_its_arguments(tmp_path, tiny_ckpt_dir, ext_dir):
    write_extension(ext_dir, "recorder", RECORDER)
    app = make_easel(tmp_path, tiny_ckpt_dir, extensions_dir=ext_dir)
    try:
        calls = module_of("recorder").CALLS
        result = app.txt2img(GenerationRequest(prompt="a cat", steps=3, width=64, height=64, seed=5, batch_size=1,
                                               n_iter=2, checkpoint="tiny-sd1", sampler_name="Euler"))
    finally:
        app.close()
    names = [c[0] for c in calls]
    assert names[:3] == ["before_process", "model_loaded", "process"]
    per_batch = ["process_batch", "extra_noise"] + ["before_cfg", "after_cfg", "step_end"] * 3 + [
        "before_image_saved", "image_saved"]
    assert names[3:] == per_batch * 2 + ["postprocess"]
    assert calls[0] == ("before_process", "a cat")
    assert calls[2] == ("process", 5, "tiny-sd1.safetensors")
    assert ("process_batch", 1, (6,)) in calls
    assert ("before_cfg", 0, (2, 4, 8, 8), (2, 77, 32)) in calls  # uncond + cond batch
    assert ("after_cfg", 2, (1, 4, 8, 8)) in calls
    assert ("image_saved", True, True) in calls
    assert calls[-1] == ("postprocess", 2)
    assert result.infotexts[0].startswith("a cat, recorded\n")  # before_process changed the request
    assert "Recorded by: recorder" in result.infotexts[0]


def test_denoiser_hook_that_changes_latents_changes_the_image(tmp_path, tiny_ckpt_dir, ext_dir):
    request = dict(prompt="a cat", steps=4, width=64, height=64, seed=5, checkpoint="tiny-sd1", save_images=False)
    plain_app = make_easel(tmp_path / "a", tiny_ckpt_dir, extensions_dir=ext_dir)
    try:
        plain = np.asarray(plain_app.txt2img(GenerationRequest(**request)).images[0]).astype(int)
    finally:
        plain_app.close()
    write_extension(ext_dir, "darken", '''
        from webui.extensions import api as easel

        @easel.hookimpl
        def step_end(step):
            if step.index == 1:
                step.latents = step.latents * 0.5
    ''')
    app = make_easel(tmp_path / "b", tiny_ckpt_dir, extensions_dir=ext_dir)
    try:
        changed = np.asarray(app.txt2img(GenerationRequest(**request)).images[0]).astype(int)
    finally:
        app.close()
    assert np.abs(plain - changed).mean() > 2


def test_broken_extensions_never_stop_startup_or_generation(tmp_path, tiny_ckpt_dir, ext_dir):
    write_extension(ext_dir, "import-error", "import not_a_module_anywhere\n")
    write_extension(ext_dir, "raises-in-hook", '''
        from webui.extensions import api as easel

        @easel.hookimpl
        def before_process(request):
            raise RuntimeError("boom in before_process")

        @easel.hookimpl
        def ui_tabs():
            def build():
                raise RuntimeError("boom in the UI")
            return [("Broken tab", build)]
    ''')
    write_extension(ext_dir, "wrong-api", "", manifest={"api_version": "7"})
    app = make_easel(tmp_path, tiny_ckpt_dir, extensions_dir=ext_dir)
    try:
        status = {e.name: e for e in app.extensions.extensions}
        assert "ModuleNotFoundError" in status["import-error"].error and not status["import-error"].loaded
        assert "hook API 7" in status["wrong-api"].error
        assert status["raises-in-hook"].loaded
        result = app.txt2img(GenerationRequest(prompt="x", steps=2, width=64, height=64, seed=1, checkpoint="tiny-sd1"))
        assert len(result.images) == 1
        assert any("raises-in-hook failed in before_process" in w for w in result.warnings)
        again = app.txt2img(GenerationRequest(prompt="x", steps=2, width=64, height=64, seed=1, checkpoint="tiny-sd1"))
        assert not any("before_process" in w for w in again.warnings)  # reported once

        from webui.ui.layout import build_ui

        build_ui(app)  # the broken tab does not break the page
        assert any(e.hook == "ui_tabs" and "boom in the UI" in e.message for e in app.engine.hooks.errors())
    finally:
        app.close()


def test_safe_mode_loads_nothing(tmp_path, tiny_ckpt_dir, ext_dir):
    write_extension(ext_dir, "recorder", RECORDER)
    app = make_easel(tmp_path, tiny_ckpt_dir, extensions_dir=ext_dir, disable_extensions=True)
    try:
        assert not any(e.loaded for e in app.extensions.extensions)
        # only Easel's own img2img scripts (SD upscale, Ultimate SD upscale) remain: no extension's
        assert {n: s for n, s in app.engine.scripts.items() if s.extension != "easel"} == {}
    finally:
        app.close()


def test_load_order_dependencies_first_then_name(tmp_path, ext_dir):
    for name, requires in (("zeta", []), ("alpha", ["zeta"]), ("beta", []), ("gamma", ["missing"])):
        write_extension(ext_dir, name, "", manifest={"requires": requires})
    store = SettingsStore(tmp_path / "config.json")
    store.load()
    manager = ExtensionManager(ext_dir, store, HookRunner(), tmp_path / "cache")
    manager.load_all()
    assert [e.name for e in manager.extensions] == ["zeta", "alpha", "beta", "gamma"]
    assert "missing" in manager.get("gamma").error and manager.get("alpha").loaded


def _git(*args, cwd):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout.strip()


def _source_repo(tmp_path) -> Path:
    repo = write_extension(tmp_path / "src", "hello-ext", '''
        from webui.extensions import api as easel

        @easel.hookimpl
        def app_started(app):
            @app.get("/hello-ext")
            def hello():
                return {"hello": 1}
    ''', manifest={"requirements": ["pluggy==1.7.0"]}, files={"javascript/hello.js": "window.helloExt = 1;\n",
                                                           "style.css": ".hello-ext { color: red; }\n"})
    _git("init", "-q", "-b", "main", cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("commit", "-qm", "first", cwd=repo)
    return repo


def test_install_enable_disable_update_uninstall_with_real_git(tmp_path, ext_dir, monkeypatch):
    repo = _source_repo(tmp_path)
    store = SettingsStore(tmp_path / "config.json")
    store.load()
    manager = ExtensionManager(ext_dir, store, HookRunner(), tmp_path / "cache")
    with pytest.raises(ExtensionError, match="needs pluggy==1.7.0; agree to install them"):
        manager.install_from_url(f"file://{repo}")  # requirements are asked about before anything lands
    assert not (ext_dir / "hello-ext").exists()
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # already installed: pip must not need the network
    ext = manager.install_from_url(f"file://{repo}", agreed=True)
    assert ext.name == "hello-ext" and ext.commit == _git("rev-parse", "HEAD", cwd=repo)
    assert not list(manager.staging_dir().iterdir())

    manager.set_enabled("hello-ext", False)
    assert store.get("disabled_extensions") == ["hello-ext"] and not manager.get("hello-ext").enabled
    manager.set_enabled("hello-ext", True)
    assert manager.get("hello-ext").enabled

    assert manager.check_update("hello-ext") is False
    (repo / "extension.py").write_text((repo / "extension.py").read_text() + "\nVERSION = 2\n")
    _git("commit", "-qam", "second", cwd=repo)
    assert manager.check_update("hello-ext") is True
    assert manager.update("hello-ext") == _git("rev-parse", "HEAD", cwd=repo)
    assert "VERSION = 2" in (ext_dir / "hello-ext" / "extension.py").read_text()

    manager.uninstall("hello-ext")
    assert not (ext_dir / "hello-ext").exists()
    with pytest.raises(ExtensionError, match="comes with Easel"):
        bundled = ExtensionManager(Path(__file__).resolve().parent.parent / "extensions", store, HookRunner(),
                                   tmp_path / "cache")
        bundled.discover()
        bundled.uninstall("xyz-plot")


def test_install_refused_when_listening_beyond_loopback(tmp_path, ext_dir):
    repo = _source_repo(tmp_path)
    store = SettingsStore(tmp_path / "config.json")
    store.load()
    manager = ExtensionManager(ext_dir, store, HookRunner(), tmp_path / "cache", allow_install=False)
    with pytest.raises(ExtensionError, match="--enable-insecure-extension-access"):
        manager.install_from_url(f"file://{repo}")
    assert not ext_dir.exists() or not any(ext_dir.iterdir())


def test_index_is_fetched_cached_and_searchable(tmp_path, ext_dir):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.json").write_text(json.dumps({"extensions": [
        {"name": "Aspect helper", "url": "https://example.invalid/a.git", "tags": ["ui"], "description": "ratios"},
        {"name": "Tiled VAE", "url": "https://example.invalid/b.git", "tags": ["memory"], "description": "big images"},
    ]}))
    handler = lambda *a, **k: SimpleHTTPRequestHandler(*a, directory=str(site), **k)  # noqa: E731
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    store = SettingsStore(tmp_path / "config.json")
    store.load()
    manager = ExtensionManager(ext_dir, store, HookRunner(), tmp_path / "cache")
    url = f"http://127.0.0.1:{server.server_port}/index.json"
    try:
        entries = manager.fetch_index(url)
    finally:
        server.shutdown()
    assert [e["name"] for e in manager.search(entries, "memory")] == ["Tiled VAE"]
    assert len(manager.fetch_index(url)) == 2  # from the cache: the server is gone


def test_assets_and_app_started_routes_are_served(tmp_path, tiny_ckpt_dir):
    repo = _source_repo(tmp_path)
    ext_dir = tmp_path / "server" / "extensions"
    ext_dir.mkdir(parents=True)
    _git("clone", "-q", str(repo), str(ext_dir / "hello-ext"), cwd=tmp_path)
    running = start_server(tmp_path / "server", tiny_ckpt_dir, ["--extensions-dir", str(ext_dir)])
    try:
        assert httpx.get(running.url + "/hello-ext").json() == {"hello": 1}
        head = httpx.get(running.url + "/config").json()["head"]  # Gradio adds it to the page's <head>
        assert "/easel/extension-files/hello-ext/javascript/hello.js" in head
        assert "/easel/extension-files/hello-ext/style.css" in head
        js = httpx.get(running.url + "/easel/extension-files/hello-ext/javascript/hello.js")
        assert js.status_code == 200 and "helloExt" in js.text
        assert httpx.get(running.url + "/easel/extension-files/hello-ext/extension.py").status_code == 404
        assert httpx.get(running.url + "/easel/extension-files/../../etc/passwd").status_code == 404
    finally:
        running.stop()


UI_EXTENSION = '''
import gradio as gr
from webui.extensions import api as easel

SEEN = []

@easel.hookimpl
def component_created(component, elem_id):
    SEEN.append(elem_id)
    if elem_id == "txt2img_cfg_scale":
        gr.Checkbox(label="My toggle", elem_id="ui_ext_toggle")

@easel.hookimpl
def ui_settings():
    return [easel.SettingSpec("ui_ext_strength", 0.5, "Strength", minimum=0, maximum=1)]

@easel.hookimpl
def ui_tabs():
    return [("UI extension", lambda: gr.Markdown("hello", elem_id="ui_ext_markdown"))]

@easel.hookimpl
def infotext_pasted(text, fields):
    if "Steps" in text:
        fields["steps"] = 33
'''


def test_ui_hooks_add_tabs_settings_and_controls(tmp_path, tiny_ckpt_dir, ext_dir):
    write_extension(ext_dir, "ui-ext", UI_EXTENSION)
    app = make_easel(tmp_path, tiny_ckpt_dir, extensions_dir=ext_dir)
    try:
        from webui.ui.layout import build_ui
        from webui.ui.send_to import pasted_fields

        blocks = build_ui(app)
        ids = {getattr(block, "elem_id", None) for block in blocks.blocks.values()}
        assert {"ui_ext_toggle", "ui_ext_markdown", "setting_ui_ext_strength"} <= ids
        assert "txt2img_prompt" in module_of("ui-ext").SEEN and "img2img_seed" in module_of("ui-ext").SEEN
        assert pasted_fields(app, "a cat\nSteps: 20, Sampler: Euler, Seed: 1")["steps"] == 33
    finally:
        app.close()


def test_every_hook_is_documented_and_exercised():
    """Like datasette: a hook without documentation or without a test fails the suite."""
    import inspect
    import types

    import pluggy

    from webui.extensions import hookspecs

    declared = {name for name, f in inspect.getmembers(hookspecs, inspect.isfunction)
                if hasattr(f, "easel_spec")}
    assert declared == set(hookspecs.HOOK_NAMES)
    tests = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    guide = (Path(__file__).resolve().parent.parent / "docs" / "extensions.md").read_text()
    for name in declared:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc) > 30, f"hook {name} is not documented"
        assert f"def {name}(" in tests, f"hook {name} is not exercised by any test extension"
        assert f"`{name}`" in guide, f"hook {name} is not listed in docs/extensions.md"
        assert "Example:" in doc, f"hook {name}: its docstring has no 'Example:' block"
        example = textwrap.dedent(doc.split("Example:", 1)[1])
        assert f"@hookimpl\ndef {name}(" in example, f"hook {name}: the example does not implement {name}"
        # The example must be real Python whose arguments the hookspec accepts: pluggy checks on register.
        namespace = {"hookimpl": pluggy.HookimplMarker(hookspecs.PROJECT)}
        exec(compile(example, f"<example of {name}>", "exec"), namespace)
        plugin = types.SimpleNamespace(**{name: namespace[name]})
        HookRunner().register(plugin, f"example-{name}")


ALWAYS_ON = '''
from dataclasses import dataclass

from webui.extensions import api as easel


@dataclass(frozen=True)
class StrengthArgs:
    strength: float = easel.arg(0.5, label="Strength", minimum=0, maximum=1)


class Strength(easel.Script):
    name = "my_alwayson"
    title = "My always-on effect"
    kind = "alwayson"
    Args = StrengthArgs

    def ui(self, tab):
        return {"strength": self.control("strength", tab, elem_id=f"{tab}_my_strength")}


@easel.hookimpl
def register_scripts():
    return [Strength()]


@easel.hookimpl
def process(context):
    args = context.script_args("my_alwayson")
    if args is not None:
        context.extra_params["My strength"] = args.strength
'''


def test_always_on_script_controls_reach_hooks_and_infotext(tmp_path, tiny_ckpt_dir, ext_dir):
    write_extension(ext_dir, "always-on", ALWAYS_ON)
    app = make_easel(tmp_path, tiny_ckpt_dir, extensions_dir=ext_dir)
    try:
        from webui.ui.layout import build_ui

        ids = {getattr(block, "elem_id", None) for block in build_ui(app).blocks.values()}
        assert {"txt2img_script_my_alwayson", "txt2img_my_strength", "img2img_my_strength"} <= ids
        result = app.txt2img(GenerationRequest(prompt="x", steps=2, width=64, height=64, seed=1, checkpoint="tiny-sd1",
                                               alwayson_scripts={"my_alwayson": {"args": {"strength": 0.3}}}))
        assert "My strength: 0.3" in result.infotexts[0]
        plain = app.txt2img(GenerationRequest(prompt="x", steps=2, width=64, height=64, seed=1, checkpoint="tiny-sd1"))
        assert "My strength" not in plain.infotexts[0]
    finally:
        app.close()


VIEWS = '''
import operator
from dataclasses import replace

from webui.extensions import api as easel

SEEN = {}

@easel.hookimpl
def model_loaded(model):
    SEEN["model"] = model

@easel.hookimpl
def before_process(request):
    for name, change in (("assign", lambda: setattr(request, "prompt", "edited in place")),
                         ("append", lambda: request.styles.append("x")),
                         ("setitem", lambda: operator.setitem(request.override_settings, "eta_ddim", 1.0))):
        try:
            change()
        except Exception as exc:
            SEEN[name] = type(exc).__name__
    return replace(request, prompt=request.prompt + ", first")

@easel.hookimpl
def process(context):
    SEEN["context_prompt"] = context.request.prompt

@easel.hookimpl
def postprocess(result):
    return replace(result, warnings=[*result.warnings, f"{len(result.images)} image(s) seen"])
'''

SECOND = '''
from dataclasses import replace

from webui.extensions import api as easel

@easel.hookimpl
def before_process(request):
    return replace(request, prompt=request.prompt + ", second")
'''


def test_hooks_get_read_only_views_and_replace_by_returning(tmp_path, tiny_ckpt_dir, ext_dir):
    """The request cannot be edited in place; returned replacements chain; the model is a ModelView."""
    from webui.extensions import api

    write_extension(ext_dir, "views", VIEWS)
    write_extension(ext_dir, "views-second", SECOND)
    write_extension(ext_dir, "wrong-return", '''
        from webui.extensions import api as easel

        @easel.hookimpl
        def before_process(request):
            return "not a request"
    ''')
    app = make_easel(tmp_path, tiny_ckpt_dir, extensions_dir=ext_dir)
    try:
        result = app.txt2img(GenerationRequest(prompt="a cat", steps=2, width=64, height=64, seed=5,
                                               checkpoint="tiny-sd1", save_images=False))
        seen = module_of("views").SEEN
    finally:
        app.close()
    assert seen["assign"] == "FrozenInstanceError"
    assert seen["append"] == "AttributeError" and seen["setitem"] == "TypeError"  # lists and dicts frozen too
    prompt = result.infotexts[0].split("\n")[0]
    assert sorted(prompt.split(", ")) == ["a cat", "first", "second"]  # each saw the other's replacement
    assert seen["context_prompt"] == prompt
    assert "1 image(s) seen" in result.warnings
    assert any("wrong-return failed in before_process (TypeError" in w for w in result.warnings)
    model = seen["model"]
    assert isinstance(model, api.ModelView) and not hasattr(model, "unet")
    assert (model.name, model.family, model.device, model.dtype) == ("tiny-sd1.safetensors", "sd1", "cpu", "float32")
    assert (model.latent_channels, model.vae_scale_factor, model.architecture) == (4, 8, "SD 1.x")
    assert model.hash == model.sha256[:10] and f"Model hash: {model.hash}" in result.infotexts[0]


FEATURES = '''
from webui.extensions import api as easel


class Mirror(easel.Feature):
    """Mirrors the images of requests that ask for it, and says so in the infotext."""

    name = "mirror"

    def parse(self, request):
        args = request.alwayson_scripts.get("mirror", {}).get("args", {})
        if not isinstance(args.get("enabled", False), bool):
            return None, [easel.FieldError("alwayson_scripts.mirror.enabled", "must be true or false")]
        return (True if args.get("enabled") else None), []

    def begin_pass(self, run, p):
        if run.args["mirror"]:
            run.state["mirror.passes"] = run.state.get("mirror.passes", []) + [p.name]

    def finish_images(self, run, batch, images, latents):
        return [image.transpose(0) for image in images] if run.args["mirror"] else images

    def infotext(self, run):
        if not run.args["mirror"]:
            return {}
        return {"Mirror": "+".join(run.state["mirror.passes"])}


class Broken(easel.Feature):
    name = "broken"

    def infotext(self, run):
        raise RuntimeError("broken on purpose")


class Clash(easel.Feature):
    name = "hires"   # Easel's own hires fix has this name


@easel.hookimpl
def register_features():
    return [Mirror(), Broken(), Clash(), "not a feature"]
'''


def test_extension_features_take_part_in_every_pass(tmp_path, tiny_ckpt_dir, ext_dir):
    """register_features: an extension's Feature parses its arguments, sees every pass, edits images and infotext;
    one that raises is reported and skipped, a taken name or a non-feature is refused."""
    write_extension(ext_dir, "features", FEATURES)
    app = make_easel(tmp_path, tiny_ckpt_dir, extensions_dir=ext_dir)
    try:
        names = [feature.name for feature in app.engine.features]
        assert names[-2:] == ["mirror", "broken"] and names.count("hires") == 1  # no clash, no "not a feature"
        base = dict(prompt="x", steps=2, width=64, height=64, seed=1, checkpoint="tiny-sd1", save_images=False)
        plain = app.txt2img(GenerationRequest(**base))
        mirrored = app.txt2img(GenerationRequest(**base, alwayson_scripts={"mirror": {"args": {"enabled": True}}}))
        assert np.array_equal(np.asarray(mirrored.images[0])[:, ::-1], np.asarray(plain.images[0]))
        assert "Mirror: first" in mirrored.infotexts[0] and "Mirror" not in plain.infotexts[0]
        hires = app.txt2img(GenerationRequest(**base, enable_hr=True, hr_scale=1.5, denoising_strength=0.5,
                                              alwayson_scripts={"mirror": {"args": {"enabled": True}}}))
        assert "Mirror: first+hires" in hires.infotexts[0]
        assert any("broken" in warning and "broken on purpose" in warning for warning in plain.warnings)
        with pytest.raises(ValidationError) as error:
            app.txt2img(GenerationRequest(**base, alwayson_scripts={"mirror": {"args": {"enabled": "yes"}}}))
        assert [e.field for e in error.value.errors] == ["alwayson_scripts.mirror.enabled"]
        problems = " ".join(str(e.message) for e in app.engine.hooks.errors())  # one report per extension and hook
        assert "'hires' is taken" in problems
    finally:
        app.close()
