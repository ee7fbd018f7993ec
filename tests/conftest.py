"""Shared test helpers: tiny configs, the reference fixtures folder, and the `slow` marker."""

from pathlib import Path

import pytest
import torch

from transformers_esam_blip import EsamBlipConfig

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
EFFICIENTSAM_FIXTURE = FIXTURES / "efficientsam" / "visible_vits_d1"
LAVIS_FIXTURE = FIXTURES / "lavis_blip_itm" / "fixture_C"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: end-to-end checks that take more than a few seconds (still run in CI)")


def tiny_sam_config_kwargs() -> dict:
    """EfficientSAM sub-configs small enough for unit tests: 64x64 input, 8x8 embedding grid, 32x32 masks."""
    return {
        "sam_vision_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 8,
            "pretrain_image_size": 32,
            "neck_hidden_sizes": [16, 16],
        },
        "prompt_encoder_config": {"hidden_size": 16, "image_size": 64, "image_embedding_size": 8},
        "mask_decoder_config": {
            "hidden_size": 16,
            "num_attention_heads": 2,
            "mlp_dim": 32,
            "iou_head_hidden_dim": 16,
            "upscaling_hidden_sizes": [8, 4],
        },
    }


def tiny_sam_config(**overrides) -> EsamBlipConfig:
    return EsamBlipConfig(**tiny_sam_config_kwargs(), **overrides)


@pytest.fixture
def efficientsam_fixture() -> Path:
    if not (EFFICIENTSAM_FIXTURE / "efficient_sam_original_format.pt").is_file():
        pytest.skip(f"reference fixture not found at {EFFICIENTSAM_FIXTURE}")
    return EFFICIENTSAM_FIXTURE


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def joint_checkpoint(tmp_path_factory) -> Path:
    """Both visible fixtures converted into one checkpoint (1-block EfficientSAM-S at 1024², 112px BLIP)."""
    from transformers_esam_blip.conversion.checkpoint import convert_checkpoint

    sources = (EFFICIENTSAM_FIXTURE / "efficient_sam_original_format.pt", LAVIS_FIXTURE / "checkpoint.pth")
    if not all(path.is_file() for path in sources):
        pytest.skip(f"reference fixtures not found under {FIXTURES}")
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
