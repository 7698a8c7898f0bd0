"""Benchmarks of the MoE expert computation (``moec bench`` and the scripts in bench/).

:mod:`moec.bench.moe_bench` times backends side by side in one process; :mod:`moec.bench.peers`
holds the implementations it compares; :mod:`moec.bench.memory` counts what a bench will allocate,
checked before it starts; :mod:`moec.bench.render` prints the table; :mod:`moec.bench.device` measures
a GPU's own dense-matmul rate and copy bandwidth, the yardsticks for achieved TFLOP/s and GB/s.
"""

from moec.bench.moe_bench import BenchOptions, BenchShape, run_bench, shape_from_spec, useful_flops
from moec.bench.render import render_table

__all__ = ["BenchOptions", "BenchShape", "render_table", "run_bench", "shape_from_spec", "useful_flops"]
