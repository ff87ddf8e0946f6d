"""What is computed: the frozen backbone and its towers' entry points, request checks, the
device queue that runs every tensor operation, and the graphs held between Forward and Backward."""

from typing import Any

# An OpenCLIP model (CLIP, CustomTextCLIP, ...): open_clip ships no types, and torch.nn.Module's
# __getattr__ would type its parts (visual, encode_image, preprocess_cfg, ...) Tensor | Module.
OpenClipModel = Any
