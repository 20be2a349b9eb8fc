"""Routing traces: the `simmoe-trace/1` format, statistics, and a synthetic generator."""

from simmoe.trace.format import FORMAT, Trace, make_meta, read_trace, validate, write_trace

__all__ = ["FORMAT", "Trace", "make_meta", "read_trace", "validate", "write_trace"]
