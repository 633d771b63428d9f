"""Keep Gradio's progress indicators to the few components where one is worth its cost in the browser.

On every status message of any event (each queue-panel tick, each progress message of a generation),
Gradio's page walks every component that has ever been a progress target of an event run in that page
(by default an event's targets are all its outputs) and, for each, searches the whole component tree for
it and re-reads its value (and the values of everything inside it, for a layout block). Two costs follow:

- Reading an ImageEditor's value exports its canvases as PNG files and uploads them (background, each
  layer, the composite): a painted picture went up three times per status message.
- The tree search: on a page of ~2,400 components one target costs ~10 ms of the page's main thread on a
  loaded 2-core box, twice per message. A generation's six outputs at four messages a second took ~60 % of
  the page's time (profiled), and one Send-to (180 outputs) made every later message cost seconds: the
  page fell further behind the longer a job ran (7.5 s after 50 s; once over 60 s in CI).

`light_progress(blocks)` runs once the page is built. An event keeps progress targets only when it shows an
indicator (not `show_progress="hidden"`) on at most `MAX_TARGETS` components, minus image editors and
blocks with children. Generations show their own progress bar and preview (ui/runner.py), so they hide
Gradio's; Send-to and paste (hundreds of outputs) finish at once. A slow action with a few outputs (PNG
Info, Extras, interrogate) keeps its spinner.
"""
from __future__ import annotations

import gradio as gr
from gradio.blocks import BlockContext

MAX_TARGETS = 4


def costly_to_read(block) -> bool:
    """Whether the page does real work to re-read it: an editor (canvas export + uploads) or a block with children
    (each of them is read; the tab bar holds the whole page). A childless gr.HTML, a BlockContext too, is cheap."""
    return isinstance(block, gr.ImageEditor) or (isinstance(block, BlockContext) and bool(block.children))


def progress_targets(fn) -> list:
    """The components an event may mark as in progress: none when it shows no indicator or would mark many."""
    if fn.show_progress == "hidden":
        return []
    targets = list(fn.show_progress_on) if fn.show_progress_on is not None else list(fn.outputs)
    kept = [block for block in targets if not costly_to_read(block)]
    return kept if len(kept) <= MAX_TARGETS else []


def light_progress(blocks: gr.Blocks) -> int:
    """Set every event's progress targets to `progress_targets(fn)`; returns how many events changed."""
    changed = 0
    for fn in blocks.fns.values():
        before = list(fn.show_progress_on) if fn.show_progress_on is not None else list(fn.outputs)
        kept = progress_targets(fn)
        if kept != before:
            fn.show_progress_on = kept
            changed += 1
    return changed
