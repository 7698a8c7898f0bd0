"""Code generation: a resolved model → one readable, standalone ``model.py`` (and ``moec build``'s output folder).

No torch at import: rendering is text; only writing weights builds a model.
"""

from moec.codegen.output import write_build
from moec.codegen.render import render_model_source

__all__ = ["render_model_source", "write_build"]
