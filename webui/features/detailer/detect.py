"""What a detailer pass looks for: faces with insightface's detector, anything else with an ONNX model.

- `face_insightface`: the detection model (SCRFD) of the insightface pack the identity features
  use (setting `identity_insightface_pack`, folder models/insightface/<pack>); only the detector
  is loaded.
- any `*.onnx` file in models/adetailer/: a YOLOv8-style detector (ultralytics' ONNX export:
  one input (1, 3, H, W) in 0..1 RGB, letterboxed with grey 114; output (1, 4 + classes, N) with
  boxes as centre x, centre y, width, height in input pixels and per-class scores; a segmentation
  export adds mask coefficients and a second output of prototypes (1, 32, h, w), which become
  the detection's mask). Class names come from the file's `names` metadata when present.
  ADetailer's published models are PyTorch `.pt` files; a request for `face_yolov8n.pt` uses
  `face_yolov8n.onnx` from that folder (export it once with ultralytics: `model.export(format="onnx")`).

onnxruntime runs both, on CUDA when its GPU provider is installed. Sessions are kept per file
(path, size, mtime); they are small (a few MB) and outside the model store's torch budget.
"""
from __future__ import annotations

import ast
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..identity.faces import pack_folder, providers

FACE_MODEL = "face_insightface"
YOLO_SIZE = 640          # a dynamic-size YOLO input is fed at this size, as ultralytics exports by default
NMS_IOU = 0.7            # ultralytics' default for predict
FACE_DET_SIZE = (640, 640)


class DetectorError(ValueError):
    user_facing = True


@dataclass
class Detection:
    box: tuple[float, float, float, float]     # x1, y1, x2, y2 in image pixels
    score: float
    label: str = ""
    mask: np.ndarray | None = None              # bool (H, W) for segmentation models, else None (the box)


def onnx_models(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.onnx") if p.is_file()) if folder.is_dir() else []


class Detectors:
    """Finds and runs the detector a pass names; one loaded session per file, kept."""

    def __init__(self, adetailer_dir: Path, insightface_dir: Path, pack=lambda: "antelopev2"):
        self.adetailer_dir = adetailer_dir
        self.insightface_dir = insightface_dir
        self.pack = pack
        self._lock = threading.Lock()
        self._sessions: dict[tuple, object] = {}

    def names(self) -> list[str]:
        """What a pass can name: the insightface face detector (when its pack is installed) and every ONNX file."""
        face = [FACE_MODEL] if pack_folder(self.insightface_dir, self.pack()) is not None else []
        return face + onnx_models(self.adetailer_dir)

    def resolve(self, name: str) -> str:
        """The model name as listed (a `.pt` name finds the `.onnx` of the same stem); DetectorError if missing."""
        if name == FACE_MODEL:
            if pack_folder(self.insightface_dir, self.pack()) is None:
                raise DetectorError(f"{FACE_MODEL} needs the insightface pack {self.pack()!r} (.onnx files) in "
                                    f"{self.insightface_dir / self.pack()}")
            return name
        files = onnx_models(self.adetailer_dir)
        stem = Path(name).stem if Path(name).suffix.lower() in (".pt", ".pth", ".onnx", ".safetensors") else name
        for file in files:
            if file == name or Path(file).stem == stem:
                return file
        choices = ", ".join(self.names()) or "none installed"
        raise DetectorError(f"detection model {name!r} not found; put a YOLOv8 .onnx export in "
                            f"{self.adetailer_dir} (available: {choices})")

    def detect(self, name: str, image: Image.Image, confidence: float, classes: str = "") -> list[Detection]:
        """Detections at or above `confidence`, in the model's order (faces: largest first)."""
        name = self.resolve(name)
        if name == FACE_MODEL:
            return self._faces(image, confidence)
        return self._yolo(self.adetailer_dir / name, image, confidence, classes)

    # ---- insightface --------------------------------------------------------------------------------

    def _face_app(self):
        folder = pack_folder(self.insightface_dir, self.pack())
        key = ("insightface", str(folder))
        with self._lock:
            if key not in self._sessions:
                from insightface.app import FaceAnalysis

                chosen = providers()
                try:
                    app = FaceAnalysis(name=str(folder), allowed_modules=["detection"], providers=chosen)
                except AssertionError:
                    raise DetectorError(f"{folder}: no face detection model among the .onnx files") from None
                app.prepare(ctx_id=0 if "CUDAExecutionProvider" in chosen else -1, det_size=FACE_DET_SIZE)
                self._sessions[key] = app
            return self._sessions[key]

    def _faces(self, image: Image.Image, confidence: float) -> list[Detection]:
        app = self._face_app()
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        with self._lock:  # insightface's detector keeps per-call caches
            boxes, _ = app.det_model.detect(bgr, max_num=0, metric="default", det_thresh=float(confidence))
        found = [Detection(tuple(float(v) for v in row[:4]), float(row[4]), "face") for row in boxes
                 if float(row[4]) >= confidence]
        return sorted(found, key=lambda d: -(d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))

    # ---- YOLOv8 ONNX ---------------------------------------------------------------------------------

    def _session(self, path: Path):
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key not in self._sessions:
                import onnxruntime

                try:
                    session = onnxruntime.InferenceSession(str(path), providers=providers())
                except Exception as exc:  # a damaged or foreign file: say which
                    raise DetectorError(f"{path.name}: not a loadable ONNX model ({exc})") from None
                self._sessions[key] = session
            return self._sessions[key]

    def _yolo(self, path: Path, image: Image.Image, confidence: float, classes: str) -> list[Detection]:
        session = self._session(path)
        inputs = session.get_inputs()
        shape = inputs[0].shape
        height = shape[2] if isinstance(shape[2], int) else YOLO_SIZE
        width = shape[3] if isinstance(shape[3], int) else YOLO_SIZE
        tensor, scale, pad = letterbox(image, (width, height))
        outputs = session.run(None, {inputs[0].name: tensor})
        names = class_names(session)
        return decode_yolo(outputs, confidence, scale, pad, image.size, names, wanted_classes(classes, names))


def letterbox(image: Image.Image, size: tuple[int, int]) -> tuple[np.ndarray, float, tuple[float, float]]:
    """The image scaled to fit `size`, centred on grey 114, as (1, 3, H, W) float32 0..1; (scale, (pad x, pad y))."""
    width, height = size
    scale = min(width / image.width, height / image.height)
    new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    canvas = Image.new("RGB", size, (114, 114, 114))
    left, top = int(round((width - new[0]) / 2 - 0.1)), int(round((height - new[1]) / 2 - 0.1))
    canvas.paste(image.convert("RGB").resize(new, Image.Resampling.BILINEAR), (left, top))
    array = np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
    return np.ascontiguousarray(array), scale, (float(left), float(top))


def class_names(session) -> dict[int, str]:
    """{index: name} from an ultralytics export's `names` metadata ("{0: 'face'}"), else {}."""
    try:
        raw = session.get_modelmeta().custom_metadata_map.get("names", "")
        names = ast.literal_eval(raw) if raw else {}
        return {int(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}
    except (ValueError, SyntaxError, AttributeError):
        return {}


def wanted_classes(classes: str, names: dict[int, str]) -> set[int] | None:
    """ad_model_classes ("face, hand" or indices) as class indices; None: every class."""
    wanted = [c.strip() for c in (classes or "").split(",") if c.strip()]
    if not wanted:
        return None
    by_name = {v.lower(): k for k, v in names.items()}
    out = set()
    for item in wanted:
        if item.isdigit():
            out.add(int(item))
        elif item.lower() in by_name:
            out.add(by_name[item.lower()])
    return out


def decode_yolo(outputs: list[np.ndarray], confidence: float, scale: float, pad: tuple[float, float],
                image_size: tuple[int, int], names: dict[int, str], classes: set[int] | None) -> list[Detection]:
    """YOLOv8 output(s) -> detections in image pixels, after confidence, class filter and NMS."""
    prediction = np.asarray(outputs[0], dtype=np.float32)
    if prediction.ndim != 3:
        raise DetectorError(f"unexpected detector output shape {prediction.shape}; expected (1, 4 + classes, N)")
    rows = prediction[0].T                      # (N, 4 + classes [+ mask coefficients])
    protos = np.asarray(outputs[1], dtype=np.float32)[0] if len(outputs) > 1 and np.ndim(outputs[1]) == 4 else None
    n_mask = protos.shape[0] if protos is not None else 0
    n_classes = rows.shape[1] - 4 - n_mask
    if n_classes < 1:
        raise DetectorError(f"detector output has {rows.shape[1]} values per box; expected 4 + classes")
    scores_all = rows[:, 4:4 + n_classes]
    if classes is not None:
        keep_cls = np.zeros(n_classes, dtype=bool)
        keep_cls[[c for c in classes if 0 <= c < n_classes]] = True
        scores_all = np.where(keep_cls[None], scores_all, 0)
    labels = scores_all.argmax(1)
    scores = scores_all.max(1)
    chosen = np.nonzero(scores >= confidence)[0]
    if chosen.size == 0:
        return []
    cx, cy, w, h = (rows[chosen, i] for i in range(4))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    order = nms(boxes, scores[chosen], NMS_IOU)
    width, height = image_size
    out = []
    for k in order:
        index = chosen[k]
        x1, y1, x2, y2 = boxes[k]
        box = (float(np.clip((x1 - pad[0]) / scale, 0, width)), float(np.clip((y1 - pad[1]) / scale, 0, height)),
               float(np.clip((x2 - pad[0]) / scale, 0, width)), float(np.clip((y2 - pad[1]) / scale, 0, height)))
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            continue
        mask = None
        if protos is not None:
            mask = _segment_mask(rows[index, 4 + n_classes:], protos, boxes[k], scale, pad, image_size)
        label = int(labels[index])
        out.append(Detection(box, float(scores[index]), names.get(label, str(label)), mask))
    return out


def _segment_mask(coefficients: np.ndarray, protos: np.ndarray, input_box: np.ndarray, scale: float,
                  pad: tuple[float, float], image_size: tuple[int, int]) -> np.ndarray:
    """sigmoid(coefficients . prototypes) inside the box, at image size (bool)."""
    channels, ph, pw = protos.shape
    logits = (coefficients[:channels] @ protos.reshape(channels, -1)).reshape(ph, pw)
    probability = 1 / (1 + np.exp(-logits))
    # prototypes cover the letterboxed input at 1/4 size: up to input size, then the letterbox undone
    input_w, input_h = pw * 4, ph * 4
    full = np.asarray(Image.fromarray(probability.astype(np.float32), "F").resize((input_w, input_h),
                                                                                    Image.Resampling.BILINEAR))
    inside = np.zeros_like(full, dtype=bool)
    x1, y1, x2, y2 = (int(round(v)) for v in input_box)
    inside[max(0, y1):max(0, y2), max(0, x1):max(0, x2)] = True
    binary = (full > 0.5) & inside
    left, top = int(pad[0]), int(pad[1])
    width, height = image_size
    crop = binary[top:top + round(height * scale), left:left + round(width * scale)]
    back = Image.fromarray(crop.astype(np.uint8) * 255, "L").resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(back) > 127


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    areas = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    while order:
        best = order.pop(0)
        keep.append(int(best))
        if not order:
            break
        rest = np.array(order)
        xx1 = np.maximum(boxes[best, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[best, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[best, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[best, 3], boxes[rest, 3])
        overlap = (xx2 - xx1).clip(0) * (yy2 - yy1).clip(0)
        union = areas[best] + areas[rest] - overlap
        ratio = np.where(union > 0, overlap / np.maximum(union, 1e-9), 0)
        order = [int(r) for r, o in zip(rest, ratio) if o <= iou]
    return keep
