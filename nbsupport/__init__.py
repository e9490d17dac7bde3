"""nbsupport: the support library of the DVPT / Pixels-Under-Pressure book.

Importing this package has no side effects: nothing is seeded, downloaded, or filtered.
Sub-modules are imported explicitly by the chapters, e.g. ``from nbsupport import fundus``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
