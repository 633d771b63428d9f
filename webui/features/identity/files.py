"""Where each identity method's files live, and exactly which are missing.

- InstantID: `models/instantid/ip-adapter.bin` (or `.safetensors`) - the face adapter;
  `models/instantid/ControlNetModel/` (config.json + diffusion_pytorch_model.safetensors) -
  the IdentityNet; and an insightface pack in `models/insightface/<pack>/`.
- PhotoMaker v1 / v2: `models/photomaker/photomaker-v1.bin` / `photomaker-v2.bin` (or
  `.safetensors`); v2 also needs the insightface pack.

Published `.bin` files are pickles; they are read with torch's weights_only unpickler, which
loads tensors and nothing callable, so no --allow-pickle is needed for them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .faces import pack_folder

ADAPTER_NAMES = ("ip-adapter.safetensors", "ip-adapter.bin")
IDENTITYNET_FOLDER = "ControlNetModel"
PHOTOMAKER_STEMS = {"PhotoMaker v1": "photomaker-v1", "PhotoMaker v2": "photomaker-v2"}


@dataclass
class IdentityFolders:
    photomaker: Path
    instantid: Path
    insightface: Path

    def adapter(self) -> Path | None:
        return next((self.instantid / n for n in ADAPTER_NAMES if (self.instantid / n).is_file()), None)

    def identitynet(self) -> Path | None:
        folder = self.instantid / IDENTITYNET_FOLDER
        if folder.is_dir() and (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
            return folder
        return None

    def photomaker_file(self, method: str) -> Path | None:
        stem = PHOTOMAKER_STEMS[method]
        return next((self.photomaker / f"{stem}{s}" for s in (".safetensors", ".bin")
                     if (self.photomaker / f"{stem}{s}").is_file()), None)

    def missing(self, method: str, pack: str) -> list[str]:
        """One line per missing file: what it is and the exact place it goes."""
        lines = []
        if method == "InstantID":
            if self.adapter() is None:
                lines.append(f"InstantID face adapter: {self.instantid / 'ip-adapter.bin'} (or ip-adapter.safetensors)")
            if self.identitynet() is None:
                folder = self.instantid / IDENTITYNET_FOLDER
                lines.append(f"InstantID IdentityNet: {folder / 'config.json'} and "
                             f"{folder / 'diffusion_pytorch_model.safetensors'}")
        else:
            if self.photomaker_file(method) is None:
                stem = PHOTOMAKER_STEMS[method]
                lines.append(f"{method} adapter: {self.photomaker / (stem + '.bin')} (or {stem}.safetensors)")
        if method in ("InstantID", "PhotoMaker v2") and pack_folder(self.insightface, pack) is None:
            lines.append(f"insightface models ({pack} pack: detection and recognition .onnx files): "
                         f"{self.insightface / pack}/")
        return lines
