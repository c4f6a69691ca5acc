"""The notebook's interactive panels (ipywidgets).

Modules, each importing only those above it in the course:
- ``widgets``: ipywidgets panels for trying models live.
"""

from lmlab.notebook.widgets import ClassifyPanel, CompressionPanel, DecodePanel, DescentPanel, NextTokenPanel

__all__ = [
    "NextTokenPanel", "DescentPanel", "CompressionPanel", "DecodePanel", "ClassifyPanel",
]
