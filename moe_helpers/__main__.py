"""``python -m moe_helpers train ...``: the three-phase run (see ``pipeline``)."""

from .pipeline import main

if __name__ == "__main__":
    raise SystemExit(main())
