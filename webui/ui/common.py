"""Small pieces of HTML and helpers shared by the tabs. No diffusion logic here."""
from __future__ import annotations

import html

CSS = """
.easel-progress { position: relative; height: 22px; border-radius: 6px; background: var(--block-background-fill);
  border: 1px solid var(--border-color-primary); overflow: hidden; margin: 4px 0; }
.easel-progress-bar { position: absolute; left: 0; top: 0; bottom: 0; background: var(--color-accent); opacity: .55;
  transition: width .2s; }
.easel-progress-text { position: relative; padding: 0 8px; font-size: 13px; line-height: 22px; }
.easel-error { color: var(--error-text-color, #b91c1c); background: var(--error-background-fill, #fee2e2);
  border: 1px solid var(--error-border-color, #fca5a5); border-radius: 6px; padding: 8px 10px; white-space: pre-wrap; }
.easel-warning { background: #fef3c7; color: #92400e; border: 1px solid #fcd34d; border-radius: 6px; padding: 6px 10px; }
.easel-info { white-space: pre-wrap; font-family: var(--font-mono); font-size: 12.5px; }
.easel-notice { border: 1px dashed var(--border-color-primary); border-radius: 8px; padding: 10px 14px; }
#txt2img_generate { min-height: 72px; }
.easel-tool { max-width: 42px; min-width: 42px !important; }
.easel-preview img { object-fit: contain !important; }  /* previews come at latent size; the browser scales them */
.easel-token-counter { display: block; text-align: right; font-size: 12px; opacity: .7; margin-top: -6px; }
"""


def esc(text: str) -> str:
    return html.escape(str(text), quote=True)


def error_html(message: str) -> str:
    return f'<div class="easel-error" role="alert">{esc(message)}</div>'


def warning_html(message: str) -> str:
    return f'<div class="easel-warning">{esc(message)}</div>'


def info_html(infotext: str, warnings: list[str] | None = None) -> str:
    parts = [warning_html(w) for w in warnings or []]
    if infotext:
        parts.append(f'<div class="easel-info">{esc(infotext)}</div>')
    return "".join(parts)


def progress_html(fraction: float, text: str) -> str:
    pct = max(0.0, min(1.0, fraction)) * 100
    return (f'<div class="easel-progress" role="progressbar" aria-valuenow="{pct:.0f}" aria-valuemin="0" '
            f'aria-valuemax="100"><div class="easel-progress-bar" style="width:{pct:.1f}%"></div>'
            f'<span class="easel-progress-text">{esc(text)}</span></div>')


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
