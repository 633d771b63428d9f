"""Keep Gradio's progress indicators off components that are expensive to read in the browser.

On every status change of any event (each queue-panel tick, each progress message of a
generation), Gradio's page re-reads the value of every component that has ever been an
event's progress target (by default: its outputs), and of every component inside one when it
is a layout block (a Tabs, a Row, ...). Reading an ImageEditor's value exports its canvases as
PNG files and uploads them: background, each layer and the composite. So once an editor had
been an output (its own upload check, a Send-to) or sat inside one (the tab bar every Send-to
switches), a painted picture was encoded and uploaded three times per status change — several
times a second while the queue panel ticks and a job reports progress — and those uploads held
up the page's own requests (the browser opens at most six connections to one server).

`light_progress(blocks)` runs once the page is built: each event's progress targets become its
outputs minus image editors and blocks with children (tab bars, groups, accordions). Those never
showed an indicator worth having (the events that set them finish at once); an event left with no
target shows none.
"""
from __future__ import annotations

import gradio as gr
from gradio.blocks import BlockContext


def costly_to_read(block) -> bool:
    """Whether the page does real work to re-read it: an editor (canvas export + uploads) or a block with children
    (each of them is read; the tab bar holds the whole page). A childless gr.HTML, a BlockContext too, is cheap."""
    return isinstance(block, gr.ImageEditor) or (isinstance(block, BlockContext) and bool(block.children))


def light_progress(blocks: gr.Blocks) -> int:
    """Drop costly progress targets from every event of `blocks`; returns how many events changed."""
    changed = 0
    for fn in blocks.fns.values():
        targets = list(fn.show_progress_on) if fn.show_progress_on is not None else list(fn.outputs)
        kept = [block for block in targets if not costly_to_read(block)]
        if len(kept) != len(targets):
            fn.show_progress_on = kept
            changed += 1
    return changed
