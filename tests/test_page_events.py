"""What the page's events read and mark: nothing that is expensive for the browser to read (issue 23, item 17).

Gradio's page re-reads every component that has been an input of a finished event, or is an event's
progress target (and everything inside one that is a layout block), each time any event changes
status. Reading an ImageEditor exports its canvases and uploads them, so no server event may take an
editor as input or show progress on one (nor on a block with children: the tab bar holds the page);
editors reach the server through their hidden twins (uploads.EditorValue), filled in the browser
just before.
"""
import gradio as gr
from gradio.blocks import BlockContext

from webui.ui.uploads import EditorValue


def _name(block) -> str:
    return getattr(block, "elem_id", None) or f"{type(block).__name__}#{block._id}"


def test_no_server_event_reads_an_editor_or_marks_a_block_with_children(easel):
    from webui.ui.layout import build_ui

    blocks = build_ui(easel)
    editors = [b for b in blocks.blocks.values() if isinstance(b, gr.ImageEditor) and not isinstance(b, EditorValue)]
    assert {e.elem_id for e in editors} >= {"img2maskimg", "inpaint_sketch", "img2img_sketch"}
    read, marked = [], []
    for fn in blocks.fns.values():
        if fn.fn is not None:  # a server event (browser-only steps copy editors into twins)
            read += [f"{fn.name}: {_name(b)}" for b in fn.inputs if b in editors]
        targets = fn.show_progress_on if fn.show_progress_on is not None else fn.outputs
        marked += [f"{fn.name}: {_name(b)}" for b in targets
                   if b in editors or (isinstance(b, BlockContext) and b.children)]
    assert read == [], "server events that read an editor (the page re-uploads it on every status change)"
    assert marked == [], "progress targets that are editors or blocks with children (the page reads every child)"


def test_each_editor_has_a_hidden_twin_with_the_same_checks(easel):
    from webui.ui.layout import build_ui

    blocks = build_ui(easel)
    twins = [b for b in blocks.blocks.values() if isinstance(b, EditorValue)]
    assert {t.mirror_of.elem_id for t in twins} == {"img2maskimg", "inpaint_sketch", "img2img_sketch"}
    for twin in twins:
        assert twin.visible is False and twin.label == twin.mirror_of.label
        assert twin._easel_limit() == twin.mirror_of._easel_limit()
