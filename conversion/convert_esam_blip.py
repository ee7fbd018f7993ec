"""Convert original EfficientSAM and/or BLIP (LAVIS or transformers) checkpoints into one EsamBlip checkpoint.

    python conversion/convert_esam_blip.py --efficientsam efficient_sam_vitt.pt --output_dir esam-ti
    python conversion/convert_esam_blip.py --blip model_base_retrieval_coco.pth --tokenizer blip-tokenizer \
        --efficientsam efficient_sam_vits.pt --output_dir esam-blip-base [--push_to_hub user/esam-blip-base]
"""

import sys

from transformers_esam_blip.conversion.checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
