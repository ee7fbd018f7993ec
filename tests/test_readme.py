"""Every Python block of the README runs as written, in order, in a folder holding what the README assumes."""

import re
import shutil
from pathlib import Path

import pytest
from conftest import EFFICIENTSAM_FIXTURE, FIXTURES

from transformers_esam_blip.conversion.checkpoint import convert_checkpoint

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_the_readme_has_python_blocks():
    assert len(_blocks()) >= 7


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path, monkeypatch, joint_checkpoint):
    # The README's names: a converted EfficientSAM folder, a joint EfficientSAM + BLIP folder and a photo. Here they
    # come from the reference fixtures (random weights, so the printed numbers mean nothing).
    convert_checkpoint(tmp_path / "esam-ti", efficientsam=EFFICIENTSAM_FIXTURE / "efficient_sam_original_format.pt")
    shutil.copytree(joint_checkpoint, tmp_path / "esam-blip-base")
    shutil.copy(FIXTURES / "dogs.jpg", tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for index, block in enumerate(_blocks()):
        try:
            exec(compile(block, f"README.md python block {index}", "exec"), namespace)
        except Exception as error:  # noqa: BLE001 - re-raised with the block that failed
            raise AssertionError(f"README python block {index} failed:\n{block}") from error
