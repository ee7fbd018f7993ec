"""`python -m transformers_esam_blip.training` (also under `accelerate launch -m` and `torchrun -m`)."""

import sys

from .command import main

sys.exit(main())
