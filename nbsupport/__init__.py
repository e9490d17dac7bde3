"""nbsupport: the support library of the DVPT / Pixels-Under-Pressure book.

Importing this package has no side effects: nothing is seeded, downloaded, or filtered.
Sub-packages, bottom to top (imports only go down): ``core`` (paths, profiles, device, checkpoints,
run records), ``data`` (procedural fundus, manifests, datasets), ``vit`` (backbones, adapters,
methods, training), ``sd`` (Stable Diffusion), ``evaluation`` (FID/KID, Vendi, alignment) and
``book`` (the chapter object, pictures, the runner, the command line).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
