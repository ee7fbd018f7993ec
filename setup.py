"""Install script for transformers-esam-blip."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
ONNX = ["onnx>=1.16", "onnxruntime>=1.18"]
RUFF = "ruff>=0.5"

setup(
    name="transformers-esam-blip",
    version="0.1.0",
    description="EfficientSAM promptable segmentation and BLIP image-text matching with Grad-CAM, as transformers models",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages(where="src"),
    include_package_data=True,
    package_data={"transformers_esam_blip": ["assets/*", "assets/**/*"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0,<6",
        "accelerate>=1.0",
        "datasets>=3.0",
        "evaluate>=0.4",
        "safetensors>=0.4",
        "huggingface-hub>=1.0",
        "pillow>=10",
        "numpy>=1.26",
        "tqdm>=4.66",
        "pycocotools>=2.0.8",
    ],
    extras_require={
        "plot": ["matplotlib>=3.8"],
        "onnx": ONNX,
        # The interactive web demo (python -m transformers_esam_blip.web_demo); its browser test also needs selenium
        # (in "tests") and Debian's chromium and chromium-driver.
        "demo": ["gradio>=6,<7"],
        # CI installs this extra: it runs the export tests and the ruff checks too.
        "tests": [
            "pytest>=8",
            "matplotlib>=3.8",
            "scipy>=1.11",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
            "selenium>=4.10",
            "gradio>=6,<7",  # the web demo's tests (the demo extra)
            RUFF,
            *ONNX,
        ],
        "dev": ["pytest>=8", "matplotlib>=3.8", "scipy>=1.11", RUFF],
    },
    entry_points={"console_scripts": ["esam-blip=transformers_esam_blip.cli:main"]},
)
