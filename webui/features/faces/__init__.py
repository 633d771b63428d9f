"""Face restoration: offline face/eye detection (OpenCV Haar cascades), FFHQ alignment, spandrel models."""
from .detect import Face, FaceDetectionUnavailable, detect_faces
from .restorers import CODEFORMER, GFPGAN, RESTORERS, FaceRestoreError, FaceRestorers, FaceResult

__all__ = ["CODEFORMER", "GFPGAN", "RESTORERS", "Face", "FaceDetectionUnavailable", "FaceRestoreError",
           "FaceRestorers", "FaceResult", "detect_faces"]
