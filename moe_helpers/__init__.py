"""Helpers for the moe-course notebooks: one module per chapter idea.

config -> data -> layers -> moe -> model -> accounting -> growth -> train -> plots
       -> widget_rendering -> calculator, routing_explorer (re-exported by widgets) -> pipeline
and, standing apart: story_grammar (the offline corpus), hub_fixture (a hub-shaped folder of
generated stories), real_models (published MoE configs), colab (the notebooks' badges and setup cell),
hf (export to and import from Hugging Face transformers).
"""

__version__ = "0.1.0"
