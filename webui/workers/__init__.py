"""Several workers behind the one job queue: `--workers cpu,cpu|cuda:0,cuda:1|auto` and `--ray-address`.

The head (this process) keeps the UI, the API, the queue and the history; each worker is a Ray
actor in a process of its own, with its own model store, that runs whole generations and sends
progress, previews and finished images back. Without those flags none of this is imported and
the queue runs its one in-process worker as before. See docs/scale-out.md.
"""
