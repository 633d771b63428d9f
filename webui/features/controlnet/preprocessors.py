"""ControlNet preprocessors: turn a picture into the map a ControlNet model expects.

Weight-free ones run on OpenCV/numpy (canny, invert, scribble, shuffle, tile, inpaint,
blur, colour grid, standard lineart). The others use controlnet-aux's networks with weights
read from models/annotators/ only - never downloaded at run time; when a file is missing
the message names it and where to put it. Annotators are published as .pth files; they
are read by torch's weights_only unpickler (forced on), which loads tensors and nothing
callable.

Every preprocessor takes an RGB uint8 array and its resolution (the short side it works
at) plus up to two thresholds, and returns an RGB uint8 map.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...model_manager.store import ModelStore

ANNOTATOR_REPO = "lllyasviel/Annotators"


class PreprocessorError(ValueError):
    user_facing = True


@dataclass
class Preprocessor:
    name: str
    label: str
    run: Callable[..., np.ndarray]
    files: tuple[str, ...] = ()                 # needed in models/annotators/
    threshold_a: tuple[str, float, float, float] | None = None   # (label, default, min, max)
    threshold_b: tuple[str, float, float, float] | None = None
    default_model_hint: str = ""                # a word model file names usually contain


def _resize_short_side(image: np.ndarray, resolution: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    if resolution <= 0 or min(h, w) == resolution:
        return image
    k = resolution / min(h, w)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)


def _rgb(single: np.ndarray) -> np.ndarray:
    return np.repeat(single[..., None], 3, axis=2) if single.ndim == 2 else single


def canny(image: np.ndarray, resolution: int, low: float = 100, high: float = 200) -> np.ndarray:
    import cv2

    return _rgb(cv2.Canny(_resize_short_side(image, resolution), int(low), int(high)))


def invert(image: np.ndarray, resolution: int, *_: float) -> np.ndarray:
    return 255 - _resize_short_side(image, resolution)


def scribble_xdog(image: np.ndarray, resolution: int, threshold: float = 32, *_: float) -> np.ndarray:
    """Difference of Gaussians, thresholded: pencil-like strokes from a photo."""
    import cv2

    small = _resize_short_side(image, resolution).astype(np.float32)
    dog = cv2.GaussianBlur(small, (0, 0), 0.5) - cv2.GaussianBlur(small, (0, 0), 5.0)
    edges = (dog.min(axis=2) < -threshold).astype(np.uint8) * 255
    return _rgb(edges)


def shuffle(image: np.ndarray, resolution: int, *_: float) -> np.ndarray:
    """Content shuffle: the picture warped by a smooth random flow (seeded by the picture)."""
    import cv2

    small = _resize_short_side(image, resolution)
    h, w = small.shape[:2]
    rng = np.random.default_rng(int(small.sum()) % (2**32))
    flow = [cv2.resize(rng.uniform(0, s, (8, 8)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
            for s in (w, h)]
    return cv2.remap(small, flow[0], flow[1], cv2.INTER_LINEAR)


def tile_resample(image: np.ndarray, resolution: int, down: float = 1.0, *_: float) -> np.ndarray:
    import cv2

    small = _resize_short_side(image, resolution)
    if down > 1:
        h, w = small.shape[:2]
        small = cv2.resize(cv2.resize(small, (max(1, int(w / down)), max(1, int(h / down))),
                                      interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_CUBIC)
    return small


def tile_colorfix(image: np.ndarray, resolution: int, variation: float = 8, *_: float) -> np.ndarray:
    """Keep the colours, drop the detail: a strong blur (the ControlNet tile "colorfix" map)."""
    import cv2

    small = _resize_short_side(image, resolution)
    return cv2.GaussianBlur(small, (0, 0), max(1.0, variation))


def blur(image: np.ndarray, resolution: int, sigma: float = 9, *_: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(_resize_short_side(image, resolution), (0, 0), max(0.1, sigma))


def color_grid(image: np.ndarray, resolution: int, *_: float) -> np.ndarray:
    """Reference colours: 1/64 of the size, scaled back up with nearest neighbour."""
    import cv2

    small = _resize_short_side(image, resolution)
    h, w = small.shape[:2]
    tiny = cv2.resize(small, (max(1, w // 64), max(1, h // 64)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(tiny, (w, h), interpolation=cv2.INTER_NEAREST)


def inpaint_map(image: np.ndarray, resolution: int, *_: float) -> np.ndarray:
    return _resize_short_side(image, resolution)


def lineart_standard(image: np.ndarray, resolution: int, *_: float) -> np.ndarray:
    from controlnet_aux.lineart_standard import LineartStandardDetector

    small = _resize_short_side(image, resolution)
    return _rgb(np.asarray(LineartStandardDetector()(small, detect_resolution=resolution, output_type="np")))


# ---- weight-based, through controlnet-aux --------------------------------------------------------


# annotators a caller loads without passing the app's model store (the engine and the API pass theirs)
ANNOTATORS = ModelStore()
KIND = "annotator"


def _aux(module: str, cls: str, **kwargs: Any) -> Callable[[Path], Any]:
    def build(folder: Path) -> Any:
        import importlib
        import warnings

        with warnings.catch_warnings():  # controlnet-aux warns about optional extras (mediapipe) and timm names
            warnings.simplefilter("ignore", UserWarning)
            detector = getattr(importlib.import_module(f"controlnet_aux.{module}"), cls)
        return detector.from_pretrained(str(folder), **kwargs)
    return build


def _run_aux(build: Callable[[Path], Any], key: str, **call: Any) -> Callable[..., np.ndarray]:
    def run(image: np.ndarray, resolution: int, *_: float, folder: Path, store: ModelStore | None = None) -> np.ndarray:
        def load() -> Any:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"  # annotator .pth: tensors only
            return build(folder)

        detector = (store if store is not None else ANNOTATORS).get(KIND, (key, str(folder)), load)
        result = detector(image, detect_resolution=resolution, image_resolution=resolution, output_type="np", **call)
        return _rgb(np.asarray(result).astype(np.uint8))
    return run


def _weighted(name: str, label: str, files: tuple[str, ...], module: str, cls: str, hint: str,
              load: dict | None = None, call: dict | None = None) -> Preprocessor:
    return Preprocessor(name, label, _run_aux(_aux(module, cls, **(load or {})), name, **(call or {})), files,
                        default_model_hint=hint)


PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in [
    Preprocessor("none", "none", lambda image, resolution, *_: image),
    Preprocessor("canny", "canny", canny, threshold_a=("Low threshold", 100, 1, 255),
                 threshold_b=("High threshold", 200, 1, 255), default_model_hint="canny"),
    Preprocessor("invert", "invert (from white background)", invert, default_model_hint="lineart"),
    Preprocessor("scribble_xdog", "scribble (XDoG)", scribble_xdog, threshold_a=("XDoG threshold", 32, 1, 64),
                 default_model_hint="scribble"),
    Preprocessor("shuffle", "shuffle", shuffle, default_model_hint="shuffle"),
    Preprocessor("tile_resample", "tile (resample)", tile_resample, threshold_a=("Down sampling rate", 1, 1, 8),
                 default_model_hint="tile"),
    Preprocessor("tile_colorfix", "tile (colorfix)", tile_colorfix, threshold_a=("Variation", 8, 3, 32),
                 default_model_hint="tile"),
    Preprocessor("inpaint", "inpaint", inpaint_map, default_model_hint="inpaint"),
    Preprocessor("blur_gaussian", "blur", blur, threshold_a=("Sigma", 9, 0.01, 64), default_model_hint="tile"),
    Preprocessor("color", "reference colour grid", color_grid, default_model_hint="color"),
    Preprocessor("lineart_standard", "lineart (standard, from white background)", lineart_standard,
                 default_model_hint="lineart"),
    _weighted("softedge_hed", "softedge (HED)", ("ControlNetHED.pth",), "hed", "HEDdetector", "softedge"),
    _weighted("softedge_pidinet", "softedge (PiDiNet)", ("table5_pidinet.pth",), "pidi", "PidiNetDetector", "softedge"),
    _weighted("lineart_realistic", "lineart (realistic)", ("sk_model.pth", "sk_model2.pth"), "lineart",
              "LineartDetector", "lineart"),
    _weighted("lineart_anime", "lineart anime", ("netG.pth",), "lineart_anime", "LineartAnimeDetector", "anime"),
    _weighted("mlsd", "MLSD (straight lines)", ("mlsd_large_512_fp32.pth",), "mlsd", "MLSDdetector", "mlsd"),
    _weighted("depth_midas", "depth (MiDaS)", ("dpt_hybrid-midas-501f0c75.pt",), "midas", "MidasDetector", "depth"),
    _weighted("depth_zoe", "depth (Zoe)", ("ZoeD_M12_N.pt",), "zoe", "ZoeDetector", "depth"),
    _weighted("depth_leres", "depth (LeReS)", ("res101.pth", "latest_net_G.pth"), "leres", "LeresDetector", "depth"),
    _weighted("openpose", "openpose (body)", ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
              "open_pose", "OpenposeDetector", "openpose"),
    _weighted("openpose_full", "openpose (body, hands, face)",
              ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"), "open_pose", "OpenposeDetector",
              "openpose", call={"include_hand": True, "include_face": True}),
    _weighted("normal_bae", "normal (BAE)", ("scannet.pt",), "normalbae", "NormalBaeDetector", "normal"),
    _weighted("segmentation", "segmentation (SAM)", ("sam_vit_h_4b8939.pth",), "segment_anything", "SamDetector",
              "seg"),
]}


# IP-Adapter units: the reference picture goes to a CLIP vision encoder as is (the encoder is the one
# that fits the adapter file; the names are those AUTOMATIC1111's ControlNet extension writes)
IP_ADAPTER_MODULES = ("ip-adapter-auto", "ip-adapter_clip_h", "ip-adapter_clip_g", "ip-adapter_clip_sd15",
                      "ip-adapter_clip_sdxl", "ip-adapter_clip_sdxl_plus_vith")
PREPROCESSORS.update({name: Preprocessor(name, name, lambda image, resolution, *_: image,
                                         default_model_hint="ip-adapter") for name in IP_ADAPTER_MODULES})
# FaceID units: the face is found in the picture when the unit runs (insightface, features/ip_adapter_faceid.py)
FACEID_MODULES = ("ip-adapter_face_id", "ip-adapter_face_id_plus")
PREPROCESSORS.update({name: Preprocessor(name, name, lambda image, resolution, *_: image,
                                         default_model_hint="faceid") for name in FACEID_MODULES})


def missing_files(preprocessor: Preprocessor, folder: Path) -> list[str]:
    return [f for f in preprocessor.files if not (folder / f).is_file()]


def run_preprocessor(name: str, image: np.ndarray, resolution: int, threshold_a: float | None,
                     threshold_b: float | None, annotator_folder: Path, store: ModelStore | None = None) -> np.ndarray:
    """The map for `image` (RGB uint8); raises PreprocessorError with a readable reason.

    Annotator models are kept in `store` (the app's model store, under its budget).
    """
    preprocessor = PREPROCESSORS.get(name)
    if preprocessor is None:
        raise PreprocessorError(f"unknown preprocessor {name!r}; choose one of: {', '.join(PREPROCESSORS)}")
    missing = missing_files(preprocessor, annotator_folder)
    if missing:
        raise PreprocessorError(
            f"preprocessor {preprocessor.label} needs {', '.join(missing)} in {annotator_folder} "
            f"(from the Hugging Face repository {ANNOTATOR_REPO}; the Models tab can download them)")
    args = [a for a in (threshold_a, threshold_b) if a is not None]
    if preprocessor.files:
        try:
            return preprocessor.run(image, resolution, *args, folder=annotator_folder, store=store)
        except PreprocessorError:
            raise
        except Exception as exc:  # a broken or mismatched annotator file
            raise PreprocessorError(f"preprocessor {preprocessor.label} failed: {exc}") from exc
    return preprocessor.run(image, resolution, *args)
