"""ugpu: turn a song into an UltraStar karaoke file on the user's NVIDIA GPU.

The package is split into a core (GPU facts, the resolver, the store) that imports
neither Typer nor rich, and the command-line edge in :mod:`ultrasinger_gpu_cli.cli`.
"""

__version__ = "0.1.0"
