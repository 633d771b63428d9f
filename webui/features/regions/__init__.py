"""Regional prompting: Regional Prompter's regions, one prompt each, applied in cross-attention (feature.py)."""
