"""robench: adversarial-robustness benchmark harness for ODE-inspired networks."""
__version__ = "0.1.0"

__all__ = ["__version__", "evaluate", "EvalSpec", "landscape", "stability", "compare"]


def __getattr__(name: str):
    # lazy: `import robench` (and so every CLI command) must not pay for torch/pandas up front
    if name == "evaluate":
        from robench.engine import evaluate

        return evaluate
    if name == "EvalSpec":
        from robench.spec import EvalSpec

        return EvalSpec
    if name == "compare":  # robench.compare(tables, a=..., b=...): lives in robench.comparison (a module named
        from robench.comparison import compare  # `compare` would replace this function on the package when imported)

        return compare
    if name in ("landscape", "stability"):  # robench.landscape(...), robench.stability(...)
        import importlib

        return getattr(importlib.import_module(f"robench.analysis.{name}"), name)
    raise AttributeError(f"module 'robench' has no attribute {name!r}")
