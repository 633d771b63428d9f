"""A tiny YOLOv8-style ONNX detector for the detailer tests, written with onnx's helper API.

It keeps the layout of ultralytics' ONNX export: input `images` (1, 3, 640, 640) in 0..1,
output `output0` (1, 4 + classes, N) with boxes as centre x, centre y, width, height in input
pixels, and the class names in the `names` metadata. The "network" is hand-made, not random:
the 640x640 input is cut into an 8x8 grid of 80-pixel cells, each cell is one candidate box
(the cell itself), class 0 ("bright") scores the cell's mean brightness and class 1 ("dark")
one minus it. So a white square on black is found where it is, and what a class filter keeps
is predictable.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

GRID, CELL = 8, 80


def write_tiny_yolo(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    centres = (np.arange(GRID) + 0.5) * CELL
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    boxes = np.stack([cx.ravel(), cy.ravel(), np.full(GRID * GRID, CELL), np.full(GRID * GRID, CELL)])[None]
    inits = [numpy_helper.from_array(boxes.astype(np.float32), "boxes"),
             numpy_helper.from_array(np.full((1, 3, 1, 1), 1 / 3, np.float32), "grey_w"),
             numpy_helper.from_array(np.ones(1, np.float32), "one"),
             helper.make_tensor("flat", TensorProto.INT64, [3], [1, 1, GRID * GRID])]
    nodes = [helper.make_node("Conv", ["images", "grey_w"], ["grey"]),
             helper.make_node("AveragePool", ["grey"], ["cells"], kernel_shape=[CELL, CELL], strides=[CELL, CELL]),
             helper.make_node("Reshape", ["cells", "flat"], ["bright"]),
             helper.make_node("Sub", ["one", "bright"], ["dark"]),
             helper.make_node("Concat", ["boxes", "bright", "dark"], ["output0"], axis=1)]
    graph = helper.make_graph(nodes, "tiny_yolo", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                                 [1, 3, 640, 640])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, GRID * GRID])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.metadata_props.add(key="names", value="{0: 'bright', 1: 'dark'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
