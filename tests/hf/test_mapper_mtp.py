"""Mapper.let_go_mtp_layers: exactly the layers a release stores after the last decoder layer, as many as its
config.json counts (num_nextn_predict_layers or num_mtp_layers, at the top or in a wrapper's text_config), are
marked read; every other tensor is left for the checkpoint's unexpected-tensor check. Expected sets are written
out by hand from the layer numbers."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from moec.hf.mapper import Mapper

NAMES = [
    "model.embed_tokens.weight",
    *(f"model.layers.{i}.mlp.gate.weight" for i in range(7)),
    "model.layers.3x.enorm.weight",  # not a layer number
    "model.layers.10.enorm.weight",  # past the MTP layers
    "lm_head.weight",
]


def let_go(tmp_path, config: dict | None, n_layers: int = 3, section: str | None = None) -> set[str]:
    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
    ck = SimpleNamespace(folder=tmp_path, file_of=dict.fromkeys(NAMES, tmp_path / "model.safetensors"), used=set())
    Mapper(ck, SimpleNamespace(layers=[None] * n_layers)).let_go_mtp_layers(section)
    return ck.used


@pytest.mark.parametrize("key", ["num_nextn_predict_layers", "num_mtp_layers"])
def test_the_counted_layers_after_the_last_are_let_go(tmp_path, key):
    assert let_go(tmp_path, {key: 2}) == {"model.layers.3.mlp.gate.weight", "model.layers.4.mlp.gate.weight"}


def test_a_wrappers_count_is_read_in_its_section(tmp_path):
    cfg = {"num_nextn_predict_layers": 3, "text_config": {"num_nextn_predict_layers": 1}}
    assert let_go(tmp_path, cfg, n_layers=5, section="text_config") == {"model.layers.5.mlp.gate.weight"}
    assert let_go(tmp_path, {"num_nextn_predict_layers": 1}, section="text_config") == set()


@pytest.mark.parametrize("config", [None, {}, {"num_nextn_predict_layers": 0}, {"num_nextn_predict_layers": True},
                                    {"num_nextn_predict_layers": "2"}, {"num_nextn_predict_layers": -1}])  # fmt: skip
def test_no_count_lets_nothing_go(tmp_path, config):
    assert let_go(tmp_path, config) == set()
