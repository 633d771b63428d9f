"""Tiled diffusion (the "Tiled Diffusion" extension's MultiDiffusion and Mixture of Diffusers) as an engine feature.

args.py reads the extension's always-on args and writes/reads its infotext; tiles.py lays out the
latent tiles and their weights; blend.py runs the denoiser per tile and blends; feature.py plugs it in.
"""
