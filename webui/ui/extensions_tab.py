"""The Extensions tab: Installed, Install from URL, Available (from an index).

Installing is two steps: the clone is staged and read first, then - if it needs pip
packages or replaces an installed copy - the tab asks, and only the answer installs.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..app import Easel
from ..extensions.manager import (DEFAULT_INDEX_URL, FULL_ACCESS_WARNING, ExtensionError, ExtensionManager,
                                  PendingInstall)
from .common import error_html, esc, warning_html

COLUMNS = ["Extension", "Enabled", "Version", "Commit", "Status"]


def _rows(easel: Easel) -> list[list[str]]:
    rows = []
    for ext in easel.extensions.discover():
        status = ext.error or ("loaded" if ext.loaded else ("disabled" if not ext.enabled else "enable, then restart"))
        if ext.requirements_missing:
            status += f"; requirements not installed: {', '.join(ext.requirements_missing)}"
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


def _question(pending: PendingInstall) -> str:
    lines = [f"**{pending.name}** ({pending.commit[:8]}) is ready to install.", f"**Warning:** {FULL_ACCESS_WARNING}"]
    if pending.replaces:
        lines.append(f"An extension is already installed in `{pending.name}`; installing replaces it.")
    if pending.requirements:
        lines.append("It needs these Python packages, installed with pip into Easel's environment: "
                     + ", ".join(f"`{r}`" for r in pending.requirements))
    return "\n\n".join(lines)


def _requirements_button(manager: ExtensionManager, name: str | None):
    """The Installed tab's 'Install requirements' button: shown only for an extension missing some."""
    ext = next((e for e in manager.extensions if e.name == name), None)
    missing = ext.requirements_missing if ext is not None else []
    return gr.update(visible=bool(missing), value=f"Install requirements: {', '.join(missing)}" if missing else
                     "Install requirements")


@dataclass
class _InstallQuestion:
    """The question shown after a clone is staged: install with/without requirements, or cancel."""

    group: gr.Group
    text: gr.Markdown
    with_requirements: gr.Button
    without_requirements: gr.Button
    cancel: gr.Button
    token: gr.State


def _install_question(prefix: str) -> _InstallQuestion:
    with gr.Group(visible=False, elem_id=f"{prefix}_question") as group:
        text = gr.Markdown("", elem_id=f"{prefix}_question_text")
        with gr.Row():
            with_requirements = gr.Button("Install with requirements", variant="primary",
                                          elem_id=f"{prefix}_with_requirements")
            without_requirements = gr.Button("Install extension only", elem_id=f"{prefix}_without_requirements")
            cancel = gr.Button("Cancel", elem_id=f"{prefix}_cancel")
    return _InstallQuestion(group, text, with_requirements, without_requirements, cancel, gr.State(""))


def build_extensions(easel: Easel) -> None:
    manager = easel.extensions
    if manager.safe_mode:
        gr.Markdown("**Safe mode**: Easel was started with `--disable-extensions`, so none are loaded.")
    gr.HTML(warning_html(FULL_ACCESS_WARNING), elem_id="extensions_access_warning")
    if not manager.allow_install:
        gr.Markdown("Installing, updating and uninstalling are off because Easel listens beyond 127.0.0.1; start "
                    "it with `--enable-insecure-extension-access` to allow them.")
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
            install_requirements = gr.Button("Install requirements", visible=False,
                                             elem_id="extensions_install_requirements")
            status = gr.HTML(_errors_html(easel), elem_id="extensions_status")
        with gr.Tab("Install from URL", elem_id="extensions_install_tab"):
            url = gr.Textbox(label="URL of the extension's git repository", elem_id="extensions_install_url")
            branch = gr.Textbox(label="Branch (optional)", elem_id="extensions_install_branch")
            folder = gr.Textbox(label="Folder name (optional)", elem_id="extensions_install_dirname")
            install = gr.Button("Install", variant="primary", elem_id="extensions_install_button")
            url_question = _install_question("extensions_install")
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
            available_question = _install_question("extensions_available")
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

    def installed_message(ext, note: str) -> str:
        return (f"<p>Installed {esc(ext.name)} at {esc(ext.commit[:8])} ({esc(note)}). Apply and restart the UI on "
                f"the Installed tab to load it; its code then runs with your full access.</p>")

    def hidden_question(message: str):
        return (message, gr.update(visible=False), "", gr.update(), gr.update(), "", *refresh()[:3])

    def start_install(repo: str, branch_name: str, dirname: str, previous: str):
        """Stage the clone; install at once if there is nothing to ask, else show the question."""
        if previous:
            manager.cancel_install(previous)
        try:
            pending = manager.stage_install(repo or "", branch_name or "", dirname or "")
            if not pending.needs_answer:
                ext, note = manager.finish_install(pending.token, install_requirements=False)
                return hidden_question(installed_message(ext, note))
        except ExtensionError as exc:
            return hidden_question(error_html(str(exc)))
        needs = bool(pending.requirements)
        return ("", gr.update(visible=True), _question(pending), gr.update(visible=needs),
                gr.update(value="Install extension only" if needs else "Replace it"), pending.token,
                *refresh()[:3])

    def finish_install(token: str, with_requirements: bool):
        try:
            ext, note = manager.finish_install(token or "", install_requirements=with_requirements)
        except ExtensionError as exc:
            return hidden_question(error_html(str(exc)))
        return hidden_question(installed_message(ext, note))

    def cancel_install(token: str):
        manager.cancel_install(token or "")
        return hidden_question("<p>Cancelled; nothing was installed.</p>")

    def do_install_requirements(name: str):
        try:
            manager.install_requirements(name, agreed=True)  # the button lists the packages: clicking agrees
        except ExtensionError as exc:
            return (*refresh(error_html(str(exc))), _requirements_button(manager, name))
        return (*refresh(f"<p>Installed the requirements of {esc(name)}; apply and restart to use them.</p>"),
                _requirements_button(manager, name))

    def wire_question(question: _InstallQuestion, result: gr.HTML, start_inputs: list, start_button: gr.Button):
        outputs = [result, question.group, question.text, question.with_requirements, question.without_requirements,
                   question.token, table, enabled, chosen]
        start_button.click(start_install, [*start_inputs, question.token], outputs, api_name=False)
        question.with_requirements.click(lambda token: finish_install(token, True), question.token, outputs,
                                         api_name=False)
        question.without_requirements.click(lambda token: finish_install(token, False), question.token, outputs,
                                            api_name=False)
        question.cancel.click(cancel_install, question.token, outputs, api_name=False)

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
    chosen.change(lambda name: _requirements_button(manager, name), chosen, install_requirements, api_name=False)
    install_requirements.click(do_install_requirements, chosen, [*refresh_outputs, install_requirements],
                               api_name=False)
    wire_question(url_question, install_result, [url, branch, folder], install)
    load.click(do_load, [index_url, search], [available, pick, available_result], api_name=False)
    search.submit(do_load, [index_url, search], [available, pick, available_result], api_name=False)
    blank = gr.State("")  # Available installs take the index's URL as it is: no branch, default folder name
    wire_question(available_question, available_result, [pick, blank, blank], install_available)
