"""The book's machinery: the chapter object, pictures, the chapter runner and the command line.

``from nbsupport import book; ch = book.start("03_benchmark", profile=profile, seed=seed)``
"""

from nbsupport.book.chapter import Chapter, start

__all__ = ["Chapter", "start"]
