"""The parallelism planner: per-rank memory and communication of a layout. Pure Python; never imports torch."""

from moec.plan.layout import AUTO, Layout, LayoutError
from moec.plan.shard import RankParams, rank_params

__all__ = ["AUTO", "Layout", "LayoutError", "RankParams", "rank_params"]
