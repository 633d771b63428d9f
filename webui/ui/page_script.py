"""The little JavaScript the page needs that Gradio's components cannot say themselves.

- Emoji-only buttons (🔄, 🎲, ♻️; all have the `easel-tool` class) get a `title` (tooltip) and an
  `aria-label` (screen readers), since gr.Button takes neither. Matched by the button's text.
- While the server is away (a restart), Gradio's timers would each fire a request every second
  and every one would fail; the page instead checks `/easel/v1/health` with a growing pause
  (0.5 s up to 5 s) and holds the timers' requests until the server answers again.
"""
from __future__ import annotations

import json

BUTTON_LABELS = {
    "🔄": "Refresh this list (rescan the model folder)",
    "🎲": "Random seed (-1)",
    "♻️": "Reuse the seed of the last image",
}

_SCRIPT = """
(() => {
  const labels = %(labels)s;
  const label = () => {
    for (const button of document.querySelectorAll("button.easel-tool:not([title])")) {
      const text = (button.textContent || "").trim();
      if (labels[text]) { button.title = labels[text]; button.setAttribute("aria-label", labels[text]); }
    }
  };
  // the page is built by Gradio after load, and tabs render lazily: look again after changes, at most every 0.5 s
  let queued = false;
  new MutationObserver(() => {
    if (!queued) { queued = true; setTimeout(() => { queued = false; label(); }, 500); }
  }).observe(document.documentElement, {childList: true, subtree: true});

  // While the server is away, wait for it with back-off instead of letting every timer fail each second.
  const realFetch = window.fetch.bind(window);
  let away = null;  // a promise that resolves when the server answers again
  const waitForServer = () => away || (away = (async () => {
    for (let pause = 500; ; pause = Math.min(pause * 2, 5000)) {
      await new Promise((done) => setTimeout(done, pause));
      try { if ((await realFetch("%(health)s", {cache: "no-store"})).ok) break; } catch (e) {}
    }
    away = null;
  })());
  window.fetch = async (input, init) => {
    const url = typeof input === "string" ? input : (input && input.url) || "";
    if (away && url.includes("/gradio_api/")) await away;
    try {
      return await realFetch(input, init);
    } catch (error) {
      if (url.includes("/gradio_api/")) waitForServer();
      throw error;
    }
  };
})();
"""


def head_script(health_path: str = "/easel/v1/health") -> str:
    """The <script> tag for the page's <head>."""
    return "<script>" + _SCRIPT % {"labels": json.dumps(BUTTON_LABELS, ensure_ascii=False),
                                   "health": health_path} + "</script>"
