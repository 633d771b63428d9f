"""Guidance add-ons: NGMS (s_min_uncond), FreeU v1/v2, Perturbed-Attention and Self-Attention Guidance.

Each is a `Feature` (its own module) that adds a `core.denoiser.Guidance` object to every denoiser
of a pass and, where it patches the UNet, installs the patch only while the pass samples.
"""
