"""The shipped specs whose model.py the code generator refuses today, each with the feature its refusal must name
(written out here, not read from the generator): the shipped-spec tests expect exactly that refusal for them."""

from __future__ import annotations

from pathlib import Path

import pytest

CODEGEN_REFUSES: dict[str, str] = {}
# shipped encoder-decoder specs: rendered by their own template (moec/codegen/encdec.py), with no KV cache, LAYERS
# table or parallelize(), so the decoder-only checks do not apply; tests/codegen/test_encdec_codegen.py tests them
ENCODER_DECODER = {"switch-base-8-encdec"}


def expect_refusal_if_refused(spec: Path | str, render) -> bool:  # type: ignore[no-untyped-def]
    """For a refused spec: assert ``render()`` raises the named refusal and return True; for an encoder-decoder
    one (tested elsewhere) return True; else return False."""
    if Path(spec).stem in ENCODER_DECODER:
        return True
    feature = CODEGEN_REFUSES.get(Path(spec).stem)
    if feature is None:
        return False
    with pytest.raises(ValueError, match=f"codegen does not support {feature}"):
        render()
    return True
