"""X/Y/Z plot: generate a grid over up to three parameters, each cell a normal generation.

Written only against the public extension API (webui.extensions.api).
"""
from __future__ import annotations

from dataclasses import replace

from webui.extensions import api as easel

from .axes import AXES, apply_value

hookimpl = easel.hookimpl
AXIS_NAMES = list(AXES)


class XYZPlot(easel.Script):
    name = "xyz_plot"
    title = "X/Y/Z plot"
    kind = "selectable"
    tabs = ("txt2img", "img2img")

    def ui(self, tab: str) -> dict:
        import gradio as gr

        controls = {}
        for axis, default in (("x", "Seed"), ("y", "Nothing"), ("z", "Nothing")):
            with gr.Row():
                controls[f"{axis}_type"] = gr.Dropdown(AXIS_NAMES, value=default, label=f"{axis.upper()} type",
                                                       elem_id=f"script_{tab}_xyz_{axis}_type")
                controls[f"{axis}_values"] = gr.Textbox(label=f"{axis.upper()} values", placeholder="e.g. 1-5, 7, 9",
                                                        elem_id=f"script_{tab}_xyz_{axis}_values")
        with gr.Row():
            controls["draw_legend"] = gr.Checkbox(True, label="Draw legend", elem_id=f"script_{tab}_xyz_legend")
            controls["include_cells"] = gr.Checkbox(True, label="Include sub images",
                                                    elem_id=f"script_{tab}_xyz_include_cells")
        return controls

    def axes(self, args: dict) -> list[tuple[str, list]]:
        found = []
        for axis in ("x", "y", "z"):
            name = args.get(f"{axis}_type") or "Nothing"
            if name not in AXES:
                raise ValueError(f"{axis}_type: unknown axis {name!r}")
            if name == "Nothing":
                found.append((name, [None]))
                continue
            try:
                values = AXES[name].parse(str(args.get(f"{axis}_values") or ""))
            except ValueError as exc:
                raise ValueError(f"{axis}_values: {exc}") from None
            if not values:
                raise ValueError(f"{axis}_values: give at least one value for {name}")
            found.append((name, values))
        return found

    def run(self, request: easel.GenerationRequest, args: dict, context: easel.GenerationContext) -> easel.Result:
        (x_name, xs), (y_name, ys), (z_name, zs) = self.axes(args)
        cells = len(xs) * len(ys) * len(zs)
        if cells > 400:
            raise ValueError(f"the plot would have {cells} cells; the limit is 400")
        base = replace(request, n_iter=1, batch_size=1)
        if "Seed" not in (x_name, y_name, z_name):
            base = replace(base, seed=easel.resolve_seed(base.seed))  # every cell gets the same seed
        cells_result = easel.Result()
        grids, legend = [], bool(args.get("draw_legend", True))
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
                    cells_result.warnings += done.warnings
                    if not done.images:  # interrupted: keep what is finished
                        cells_result.interrupted = True
                        break
                    row.append(done.images[0])
                    for attr in ("images", "infotexts", "seeds", "paths"):
                        getattr(cells_result, attr).extend(getattr(done, attr)[:1])
                if row:
                    rows.append(row)
                if cells_result.interrupted:
                    break
            if rows:
                grids.append(easel.draw_grid(
                    rows, [AXES[y_name].caption(y) for y in ys[:len(rows)]] if legend and y_name != "Nothing" else None,
                    [AXES[x_name].caption(x) for x in xs] if legend and x_name != "Nothing" else None,
                    AXES[z_name].caption(z) if legend and z_name != "Nothing" else None))
            if cells_result.interrupted:
                break
        return self._assemble(cells_result, grids, context, base, bool(args.get("include_cells", True)))

    def _assemble(self, cells, grids, context, base, include_cells: bool) -> easel.Result:
        """The grid first (with the first cell's infotext), then the cells if wanted."""
        result = easel.Result(warnings=cells.warnings, interrupted=cells.interrupted)
        if grids:
            grid = grids[0] if len(grids) == 1 else easel.draw_grid([grids])
            text = cells.infotexts[0] if cells.infotexts else ""
            seed = cells.seeds[0] if cells.seeds else base.seed
            result.images.append(grid)
            result.infotexts.append(text)
            result.seeds.append(seed)
            if base.save_images and context.save_grid is not None:
                result.paths.append(context.save_grid(grid, text, seed))
        if include_cells:
            for attr in ("images", "infotexts", "seeds", "paths"):
                getattr(result, attr).extend(getattr(cells, attr))
        return result


@hookimpl
def register_scripts():
    return [XYZPlot()]
