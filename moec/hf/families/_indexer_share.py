"""The per-layer indexer types of the families whose layers may attend an earlier layer's indexer choice (GLM-5.2's
glm_moe_dsa, HY-V4's hy_v4; ``layers.*.attention.indexer: shared``, moec/spec/indexer.py): one reader of their
``full`` / ``shared`` lists, each family giving its own list (its config field or its class's schedule)."""

from __future__ import annotations

from moec.hf.draft import Draft, HFConfig
from moec.hf.families._common import all_known


def shared_indexer_layers(c: HFConfig, d: Draft, key: str, types: list[str] | None, where: str, cls: str) -> None:
    """``types`` (full or shared per layer, from the config field ``key``; ``where`` names their source in the note)
    checked against the layer count and the two values; a shared layer 0 refused (``{cls}Attention`` raises: no
    layer before it chose), and the shared layers planned as ``layers.*.attention.indexer: shared``."""
    if not (d.fits_layers(c, key, types) and all_known(c, key, types, ("full", "shared"))):  # type: ignore[arg-type]
        return
    assert types is not None
    if types[0] == "shared":
        c.bad(key, f"layer 0 is shared, but no layer before it runs an indexer ({cls}Attention raises)")
    elif "shared" in types:
        d.layer_attention["indexer"] = (
            ["shared" if t == "shared" else True for t in types],
            f"{where}: a shared layer attends the top-k the last full layer chose, with no indexer of its own",
        )
