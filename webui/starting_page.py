"""The page a browser gets while Easel is still starting: what is loading, then the UI by itself.

It is served by webui/startup.py before gradio, torch and the engine are imported. It asks
`easel/v1/startup` a few times a second, lists the start-up steps with their times, and reloads
into the real UI as soon as that is mounted. If start-up fails, it shows why. It needs nothing
from the network: no scripts, styles or fonts beyond what is written here.
"""
from __future__ import annotations

import html

MARKER = 'name="easel-starting"'  # in the page's <head>, so a client can tell this page from the UI

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta %(marker)s content="1">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>Easel is starting…</title>
<style>
  :root { color-scheme: light dark; font-family: system-ui, sans-serif; }
  body { max-width: 40rem; margin: 12vh auto; padding: 0 1.5rem; line-height: 1.5; }
  h1 { font-size: 1.6rem; margin-bottom: .2rem; }
  .note { opacity: .75; margin-top: 0; }
  ol { list-style: none; padding-left: 0; }
  li::before { display: inline-block; width: 1.5rem; }
  li.done::before { content: "✓"; }
  li.now::before { content: "→"; }
  li.now { font-weight: 600; }
  li.now::after { content: " …"; }
  .time { opacity: .6; font-variant-numeric: tabular-nums; font-weight: normal; }
  #error { color: #c0392b; white-space: pre-wrap; }
</style>
</head>
<body>
<h1>Easel is starting</h1>
<p class="note">Easel %(version)s. This page turns into Easel by itself as soon as the interface is
ready; the model then loads in the background, and a generation started meanwhile waits for it.</p>
<ol id="steps"><li class="now">Starting the server</li></ol>
<p id="error" role="alert"></p>
<script>
(() => {
  const steps = document.getElementById("steps"), error = document.getElementById("error");
  const show = (state) => {
    steps.replaceChildren(...state.stages.map((stage, i) => {
      const item = document.createElement("li");
      const last = i === state.stages.length - 1 && !state.error;
      item.className = last ? "now" : "done";
      item.textContent = stage.name + " ";
      const time = document.createElement("span");
      time.className = "time";
      time.textContent = stage.seconds.toFixed(1) + " s";
      item.append(time);
      return item;
    }));
    error.textContent = state.error ? "Easel could not start: " + state.error : "";
  };
  let pause = 300;
  const poll = async () => {
    try {
      const answer = await fetch("easel/v1/startup", {cache: "no-store"});
      if (answer.ok) {
        const state = await answer.json();
        show(state);
        if (state.ui) { location.reload(); return; }
        if (state.error) return;
        pause = 300;
      }
    } catch (e) {
      error.textContent = "The server does not answer; if it stopped, the terminal where Easel runs says why. " +
        "Trying again…";
      pause = Math.min(pause * 2, 5000);
    }
    setTimeout(poll, pause);
  };
  poll();
})();
</script>
</body>
</html>
"""


def starting_page(version: str) -> bytes:
    return (_PAGE % {"marker": MARKER, "version": html.escape(version)}).encode("utf-8")
