"""DomainLens core: datasets -> features -> cache -> reductions / metrics -> figures.

A library: it never imports streamlit. The CLI (``python -m core``) and the dashboard call the same
functions with the same config objects.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``from core import linear_cka, debiased_cka`` (loaded on first use; numpy only)."""
    if name in ("linear_cka", "debiased_cka"):
        from core.analysis import cka

        return getattr(cka, name)
    raise AttributeError(f"module 'core' has no attribute {name!r}")
