"""``python -m moe_helpers train ...``: the three-phase run; ``python -m moe_helpers export ...``:
a run's model for Hugging Face ``transformers`` (see ``pipeline``)."""

from .pipeline import main

if __name__ == "__main__":
    raise SystemExit(main())
