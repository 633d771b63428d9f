"""Image grids with row/column labels (X/Y/Z plot, prompt matrix, batch overviews)."""
from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in str(text).split("\n"):
        words, line = paragraph.split(" "), ""
        for word in words:
            candidate = f"{line} {word}".strip()
            if draw.textlength(candidate, font=font) <= width or not line:
                line = candidate
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return lines


def draw_grid(images: list[list[Image.Image]], row_labels: list[str] | None = None,
              column_labels: list[str] | None = None, title: str | None = None) -> Image.Image:
    """Rows of equally sized images; labels go above the columns and left of the rows."""
    rows, cols = len(images), max(len(r) for r in images)
    cell_w = max(img.width for r in images for img in r)
    cell_h = max(img.height for r in images for img in r)
    size = max(12, min(cell_w, cell_h) // 10)
    font = _font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = size + 4
    top_lines = max((len(_wrap(probe, label, font, cell_w - 8)) for label in column_labels or []), default=0)
    top = top_lines * line_h + (8 if top_lines else 0)
    left = 0
    if row_labels:
        left = min(max(int(probe.textlength(label, font=font)) for label in row_labels) + 16, cell_w)
    title_h = (len(_wrap(probe, title, font, left + cols * cell_w - 8)) * line_h + 8) if title else 0
    grid = Image.new("RGB", (left + cols * cell_w, title_h + top + rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    if title:
        for i, line in enumerate(_wrap(draw, title, font, grid.width - 8)):
            draw.text((grid.width // 2, 4 + i * line_h), line, fill=TEXT, font=font, anchor="ma")
    for c, label in enumerate(column_labels or []):
        for i, line in enumerate(_wrap(draw, label, font, cell_w - 8)):
            draw.text((left + c * cell_w + cell_w // 2, title_h + 4 + i * line_h), line, fill=TEXT, font=font,
                      anchor="ma")
    for r, label in enumerate(row_labels or []):
        lines = _wrap(draw, label, font, left - 8)
        y = title_h + top + r * cell_h + cell_h // 2 - len(lines) * line_h // 2
        for i, line in enumerate(lines):
            draw.text((left - 8, y + i * line_h), line, fill=TEXT, font=font, anchor="ra")
    for r, row in enumerate(images):
        for c, image in enumerate(row):
            grid.paste(image.convert("RGB"), (left + c * cell_w, title_h + top + r * cell_h))
    return grid


def cell_box(grid_size: tuple[int, int], rows: int, cols: int, cell: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of the cell grid (where the first image starts), given the labelled grid size."""
    return grid_size[0] - cols * cell[0], grid_size[1] - rows * cell[1]
