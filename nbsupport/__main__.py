"""``python -m nbsupport`` entry point."""

from nbsupport.book.cli import main

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
