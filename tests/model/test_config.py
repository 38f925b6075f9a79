"""Model config validation and the named registry."""

import dataclasses

import pytest

from model.config import MODEL_CONFIGS, ModelConfig, get_config


def test_registry_lookup_and_overrides():
    tiny = get_config("tiny", pooling="mean")
    assert tiny.pooling == "mean" and MODEL_CONFIGS["tiny"].pooling == "lse"
    with pytest.raises(ValueError, match=r"available: .*tiny"):
        get_config("huge")


def test_config_is_frozen_and_round_trips():
    config = MODEL_CONFIGS["demo"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.embed_size = 3
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**config.to_dict(), "layers": 3})


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(pooling="avg"), "pooling must be one of"),
        (dict(coding="medium"), "coding must be one of"),
        (dict(embed_size=30, attention_heads=8), "not divisible"),
        (dict(text_encoder="bert"), "needs bert_dir"),
        (dict(pooling_temperature=0), "temperatures"),
        (dict(img_dim=0), "img_dim must be >= 1"),
    ],
)
def test_invalid_configs_are_rejected(change, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**change)
