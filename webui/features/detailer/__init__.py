"""The detailer: ADetailer's detect-and-inpaint passes as an engine feature (feature.py)."""
