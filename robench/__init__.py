"""robench: adversarial-robustness benchmark harness for ODE-inspired networks."""
__version__ = "0.1.0"
