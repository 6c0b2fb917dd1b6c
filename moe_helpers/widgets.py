"""The notebooks' two widgets, under the name the notebooks have always imported.

* ``routing_explorer`` (notebook 02) lives in ``routing_explorer.py``;
* ``param_calculator`` (notebook 03) lives in ``calculator.py``;
* what both share (drawing to PNG from any thread, the render loop) lives in
  ``widget_rendering.py``.
"""

from .calculator import (CALCULATOR_FIELDS, CalculatorSummary, ParamCalculator, active_by_part,
                         calculator_config, calculator_presets, calculator_summary, param_calculator,
                         plot_parameter_breakdown)
from .routing_explorer import (SAMPLE_SENTENCE, RoutingExplorer, RoutingSummary, plot_routing_load,
                               routing_explorer, routing_summary)

__all__ = [
    "CALCULATOR_FIELDS", "CalculatorSummary", "ParamCalculator", "active_by_part", "calculator_config",
    "calculator_presets", "calculator_summary", "param_calculator", "plot_parameter_breakdown",
    "SAMPLE_SENTENCE", "RoutingExplorer", "RoutingSummary", "plot_routing_load", "routing_explorer",
    "routing_summary",
]
