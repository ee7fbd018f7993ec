"""Shared test helpers: tiny configs and the reference fixtures folder (the `slow` marker is in pyproject.toml)."""

from pathlib import Path

import pytest
import torch

from transformers_esam_blip import EsamBlipConfig
from transformers_esam_blip.training import tiny_sam_config_kwargs

# Reference outputs of the original implementations, copied from the project's shared fixtures (see its README).
FIXTURES = Path(__file__).resolve().parent / "fixtures"
EFFICIENTSAM_FIXTURE = FIXTURES / "efficientsam" / "visible_vits_d1"
LAVIS_FIXTURE = FIXTURES / "lavis_blip_itm" / "fixture_C"


def tiny_sam_config(**overrides) -> EsamBlipConfig:
    return EsamBlipConfig(**tiny_sam_config_kwargs(), **overrides)


@pytest.fixture
def efficientsam_fixture() -> Path:
    return EFFICIENTSAM_FIXTURE


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def joint_checkpoint(tmp_path_factory) -> Path:
    """Both visible fixtures converted into one checkpoint (1-block EfficientSAM-S at 1024², 112px BLIP)."""
    from transformers_esam_blip.conversion.checkpoint import convert_checkpoint

    sources = (EFFICIENTSAM_FIXTURE / "efficient_sam_original_format.pt", LAVIS_FIXTURE / "checkpoint.pth")
    output = tmp_path_factory.mktemp("joint") / "esam-blip"
    convert_checkpoint(
        output,
        efficientsam=sources[0],
        blip=sources[1],
        blip_vision_heads=4,
        blip_text_heads=4,
        tokenizer=LAVIS_FIXTURE / "tokenizer",
    )
    return output
