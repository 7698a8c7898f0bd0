"""The analyzer: parameters, FLOPs and memory from a resolved model. Pure Python; never imports torch."""

from moec.analyze.report import SCHEMA, Analysis, analyze, convention_line, conventions

__all__ = ["SCHEMA", "Analysis", "analyze", "convention_line", "conventions"]
