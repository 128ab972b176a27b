"""DomainLens core: datasets -> features -> cache -> reductions / metrics -> figures.

A library: it never imports streamlit. The CLI (``python -m core``) and the dashboard call the same
functions with the same config objects.
"""

__version__ = "0.1.0"
