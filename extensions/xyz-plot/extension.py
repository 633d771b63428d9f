"""X/Y/Z plot: generate a grid over up to three parameters, each cell a normal generation.

Written only against the public extension API (webui.extensions.api). Skip drops the cell
being generated (it stays blank) and the grid goes on; Interrupt stops the grid and keeps the
finished cells.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from webui.extensions import api as easel

from .axes import AXES, apply_value

hookimpl = easel.hookimpl
AXIS_NAMES = list(AXES)
VALUES_HINT = "e.g. 1-5, 7, 9"


@dataclass(frozen=True)
class XYZArgs:
    """The plot's arguments, in AUTOMATIC1111's positional order."""

    x_type: str = easel.arg("Seed", label="X type", choices=AXIS_NAMES, elem_id="xyz_x_type")
    x_values: str = easel.arg("", label="X values", placeholder=VALUES_HINT, elem_id="xyz_x_values")
    y_type: str = easel.arg("Nothing", label="Y type", choices=AXIS_NAMES, elem_id="xyz_y_type")
    y_values: str = easel.arg("", label="Y values", placeholder=VALUES_HINT, elem_id="xyz_y_values")
    z_type: str = easel.arg("Nothing", label="Z type", choices=AXIS_NAMES, elem_id="xyz_z_type")
    z_values: str = easel.arg("", label="Z values", placeholder=VALUES_HINT, elem_id="xyz_z_values")
    draw_legend: bool = easel.arg(True, label="Draw legend", elem_id="xyz_legend")
    include_cells: bool = easel.arg(True, label="Include sub images", elem_id="xyz_include_cells")


class XYZPlot(easel.Script):
    name = "xyz_plot"
    title = "X/Y/Z plot"
    kind = "selectable"
    tabs = ("txt2img", "img2img")
    Args = XYZArgs

    def ui(self, tab: str) -> dict:
        import gradio as gr

        controls = {}
        for axis in ("x", "y", "z"):
            with gr.Row():
                for name in (f"{axis}_type", f"{axis}_values"):
                    controls[name] = self.control(name, tab)
        with gr.Row():
            for name in ("draw_legend", "include_cells"):
                controls[name] = self.control(name, tab)
        return controls

    def axes(self, args: XYZArgs) -> list[tuple[str, list]]:
        found = []
        for axis in ("x", "y", "z"):
            name = getattr(args, f"{axis}_type") or "Nothing"
            if name not in AXES:
                raise ValueError(f"{axis}_type: unknown axis {name!r}")
            if name == "Nothing":
                found.append((name, [None]))
                continue
            try:
                values = AXES[name].parse(getattr(args, f"{axis}_values"))
            except ValueError as exc:
                raise ValueError(f"{axis}_values: {exc}") from None
            if not values:
                raise ValueError(f"{axis}_values: give at least one value for {name}")
            found.append((name, values))
        return found

    def run(self, request: easel.GenerationRequest, args: XYZArgs,
            context: easel.GenerationContext) -> easel.Result:
        (x_name, xs), (y_name, ys), (z_name, zs) = self.axes(args)
        cells = len(xs) * len(ys) * len(zs)
        if cells > 400:
            raise ValueError(f"the plot would have {cells} cells; the limit is 400")
        base = replace(request, n_iter=1, batch_size=1)
        if "Seed" not in (x_name, y_name, z_name):
            base = replace(base, seed=easel.resolve_seed(base.seed))  # every cell gets the same seed
        cells_result = easel.Result()
        grids, legend = [], args.draw_legend
        for z in zs:
            rows = []
            for y in ys:
                row = []
                for x in xs:
                    cell = base
                    for name, values, value in ((x_name, xs, x), (y_name, ys, y), (z_name, zs, z)):
                        if name != "Nothing":
                            cell = apply_value(name, cell, value, values)
                    done = context.generate(cell)
                    cells_result.warnings += [w for w in done.warnings if w not in cells_result.warnings]
                    if done.interrupted:  # Interrupt: stop the grid, keep what is finished
                        cells_result.interrupted = True
                        break
                    if not done.images:  # Skip: this cell stays blank, the grid goes on
                        cells_result.skipped_batches += max(1, done.skipped_batches)
                        row.append(None)
                        continue
                    row.append(done.images[0])
                    for attr in ("images", "infotexts", "seeds", "paths"):
                        getattr(cells_result, attr).extend(getattr(done, attr)[:1])
                if row:
                    rows.append(row)
                if cells_result.interrupted:
                    break
            if any(image is not None for row in rows for image in row):
                grids.append(easel.draw_grid(
                    rows, [AXES[y_name].caption(y) for y in ys[:len(rows)]] if legend and y_name != "Nothing" else None,
                    [AXES[x_name].caption(x) for x in xs] if legend and x_name != "Nothing" else None,
                    AXES[z_name].caption(z) if legend and z_name != "Nothing" else None))
            if cells_result.interrupted:
                break
        return self._assemble(cells_result, grids, context, base, args.include_cells)

    def _assemble(self, cells, grids, context, base, include_cells: bool) -> easel.Result:
        """The grid first (with the first cell's infotext), then the cells if wanted."""
        result = easel.Result(warnings=cells.warnings, interrupted=cells.interrupted,
                              skipped_batches=cells.skipped_batches)
        if grids:
            grid = grids[0] if len(grids) == 1 else easel.draw_grid([grids])
            text = cells.infotexts[0] if cells.infotexts else ""
            seed = cells.seeds[0] if cells.seeds else base.seed
            result.images.append(grid)
            result.infotexts.append(text)
            result.seeds.append(seed)
            if base.save_images:
                result.paths.append(context.save_grid(grid, text, seed))
        if include_cells:
            for attr in ("images", "infotexts", "seeds", "paths"):
                getattr(result, attr).extend(getattr(cells, attr))
        return result


@hookimpl
def register_scripts():
    return [XYZPlot()]
