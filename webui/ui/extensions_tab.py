"""The Extensions tab: Installed, Install from URL, Available (from an index)."""
from __future__ import annotations

import gradio as gr

from ..app import Easel
from ..extensions.manager import DEFAULT_INDEX_URL, ExtensionError
from .common import error_html, esc

COLUMNS = ["Extension", "Enabled", "Version", "Commit", "Status"]


def _rows(easel: Easel) -> list[list[str]]:
    rows = []
    for ext in easel.extensions.discover():
        status = ext.error or ("loaded" if ext.loaded else ("disabled" if not ext.enabled else "enable, then restart"))
        rows.append([ext.name, "yes" if ext.enabled else "no", ext.manifest.version, ext.commit[:8], status])
    return rows


def _names(easel: Easel) -> list[str]:
    return [ext.name for ext in easel.extensions.extensions]


def _errors_html(easel: Easel) -> str:
    errors = easel.engine.hooks.errors() if hasattr(easel.engine.hooks, "errors") else []
    if not errors:
        return ""
    items = "".join(f"<li><b>{esc(e.extension)}</b> in <code>{esc(e.hook)}</code>: {esc(e.message)}</li>"
                    for e in errors)
    return f'<div class="easel-warning"><p>Extension problems (their hooks are skipped):</p><ul>{items}</ul></div>'


def build_extensions(easel: Easel) -> None:
    manager = easel.extensions
    if manager.safe_mode:
        gr.Markdown("**Safe mode**: Easel was started with `--disable-extensions`, so none are loaded.")
    if not manager.allow_install:
        gr.Markdown("Installing and updating is off because Easel listens beyond 127.0.0.1; start it with "
                    "`--enable-insecure-extension-access` to allow it.")
    with gr.Tabs(elem_id="tabs_extensions"):
        with gr.Tab("Installed", elem_id="extensions_installed_tab"):
            table = gr.Dataframe(_rows(easel), headers=COLUMNS, interactive=False, elem_id="extensions_installed_table")
            enabled = gr.CheckboxGroup(_names(easel), value=[e.name for e in manager.extensions if e.enabled],
                                       label="Enabled extensions", elem_id="extensions_enabled")
            with gr.Row():
                apply = gr.Button("Apply and restart UI", variant="primary", elem_id="extensions_apply")
                check = gr.Button("Check for updates", elem_id="extensions_check")
            with gr.Row():
                chosen = gr.Dropdown(_names(easel), label="Extension", elem_id="extensions_chosen", scale=3)
                update = gr.Button("Update", elem_id="extensions_update", scale=1)
                confirm = gr.Checkbox(False, label="I want to delete it", elem_id="extensions_uninstall_confirm")
                uninstall = gr.Button("Uninstall", variant="stop", elem_id="extensions_uninstall", scale=1)
            status = gr.HTML(_errors_html(easel), elem_id="extensions_status")
        with gr.Tab("Install from URL", elem_id="extensions_install_tab"):
            url = gr.Textbox(label="URL of the extension's git repository", elem_id="extensions_install_url")
            branch = gr.Textbox(label="Branch (optional)", elem_id="extensions_install_branch")
            folder = gr.Textbox(label="Folder name (optional)", elem_id="extensions_install_dirname")
            agree = gr.Checkbox(False, label="Install the Python packages it needs (pip) into Easel's environment",
                                elem_id="extensions_install_agree")
            install = gr.Button("Install", variant="primary", elem_id="extensions_install_button")
            install_result = gr.HTML("", elem_id="extensions_install_result")
        with gr.Tab("Available", elem_id="extensions_available_tab"):
            index_url = gr.Textbox(easel.settings.get("extensions_index_url") or DEFAULT_INDEX_URL, label="Index URL",
                                   elem_id="extensions_index_url")
            with gr.Row():
                load = gr.Button("Load from:", elem_id="extensions_load_index")
                search = gr.Textbox(placeholder="Search by name, description or tag", show_label=False,
                                    elem_id="extensions_search")
            available = gr.Dataframe([], headers=["Name", "Tags", "Description", "URL"], interactive=False,
                                     elem_id="extensions_available_table")
            pick = gr.Dropdown([], label="Install this one", elem_id="extensions_available_pick")
            install_available = gr.Button("Install", elem_id="extensions_available_install")
            available_result = gr.HTML("", elem_id="extensions_available_result")

    def refresh(message: str = ""):
        names = _names(easel)
        return (_rows(easel), gr.update(choices=names, value=[e.name for e in manager.extensions if e.enabled]),
                gr.update(choices=names), message + _errors_html(easel))

    refresh_outputs = [table, enabled, chosen, status]

    def do_apply(names: list[str]):
        manager.set_enabled_list(names or [])
        easel.restart_requested.set()
        return refresh("<p>Restarting… the page reconnects in a few seconds.</p>")

    def do_check():
        lines = []
        for ext in manager.extensions:
            if not ext.commit:
                continue
            try:
                lines.append(f"{ext.name}: {'update available' if manager.check_update(ext.name) else 'up to date'}")
            except ExtensionError as exc:
                lines.append(f"{ext.name}: {exc}")
        return refresh("<p>" + "<br>".join(esc(line) for line in lines or ["no git extensions"]) + "</p>")

    def do_update(name: str):
        try:
            commit = manager.update(name)
        except ExtensionError as exc:
            return refresh(error_html(str(exc)))
        return refresh(f"<p>{esc(name)} is now at {esc(commit[:8])}; apply and restart to load it.</p>")

    def do_uninstall(name: str, sure: bool):
        if not sure:
            return refresh(error_html("Tick 'I want to delete it' first."))
        try:
            manager.uninstall(name)
        except ExtensionError as exc:
            return refresh(error_html(str(exc)))
        return refresh(f"<p>Removed {esc(name)}.</p>")

    def do_install(repo: str, branch_name: str, dirname: str, agreed: bool):
        try:
            ext = manager.install_from_url(repo, branch_name, dirname)
            note = manager.install_requirements(ext.name, agreed)
        except ExtensionError as exc:
            return error_html(str(exc))
        return (f"<p>Installed {esc(ext.name)} at {esc(ext.commit[:8])} ({esc(note)}). Enable it on the Installed "
                f"tab and apply.</p>")

    def do_load(url_text: str, query: str):
        try:
            entries = manager.fetch_index(url_text.strip())
        except ExtensionError as exc:
            return [], gr.update(choices=[]), error_html(str(exc))
        easel.settings.set_extra("extensions_index_url", url_text.strip())
        shown = manager.search(entries, query or "")
        rows = [[e.get("name", ""), ", ".join(map(str, e.get("tags", []))), e.get("description", ""), e["url"]]
                for e in shown]
        return rows, gr.update(choices=[e["url"] for e in shown]), f"<p>{len(shown)} of {len(entries)} shown.</p>"

    apply.click(do_apply, enabled, refresh_outputs, api_name=False)
    check.click(do_check, None, refresh_outputs, api_name=False)
    update.click(do_update, chosen, refresh_outputs, api_name=False)
    uninstall.click(do_uninstall, [chosen, confirm], refresh_outputs, api_name=False)
    install.click(do_install, [url, branch, folder, agree], install_result, api_name=False)
    load.click(do_load, [index_url, search], [available, pick, available_result], api_name=False)
    search.submit(do_load, [index_url, search], [available, pick, available_result], api_name=False)
    install_available.click(lambda repo: do_install(repo or "", "", "", False), pick, available_result, api_name=False)
