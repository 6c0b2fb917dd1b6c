"""Helpers for the moe-course notebooks: one module per chapter idea.

config -> data -> layers -> moe -> model -> accounting -> growth -> train -> plots -> widgets -> pipeline
"""

__version__ = "0.1.0"
