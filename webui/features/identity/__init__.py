"""Identity: PhotoMaker (v1, v2) and InstantID with insightface face analysis (SDXL)."""
