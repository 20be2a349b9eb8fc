"""simmoe: discrete-event simulator of Mixture-of-Experts serving on constrained hardware."""

__version__ = "0.1.0"
