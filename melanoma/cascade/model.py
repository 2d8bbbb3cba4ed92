"""The cascade: segment, mask or crop, classify. One module, exported as one artifact.

Input: uint8 images (N, 3, S, S), squashed to S x S by ``melanoma.data.io.load_image`` (the
resize every training image went through). Output: melanoma probability (N,) and the
binary lesion mask (N, 1, S, S). Normalisation lives inside each model; masking/cropping
is ``apply_input_mode``, the function training used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from melanoma.data.transforms import apply_input_mode


class Cascade(nn.Module):
    def __init__(
        self,
        segmenter: nn.Module,
        classifier: nn.Module,
        *,
        input_size: int,
        seg_size: int,
        cls_size: int,
        input_mode: str,
        crop_margin: float = 0.15,
        mask_threshold: float = 0.5,
    ):
        super().__init__()
        self.segmenter = segmenter
        self.classifier = classifier
        self.input_size, self.seg_size, self.cls_size = input_size, seg_size, cls_size
        self.input_mode, self.crop_margin, self.mask_threshold = (
            input_mode,
            crop_margin,
            mask_threshold,
        )

    @staticmethod
    def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
        if x.shape[-1] == size and x.shape[-2] == size:
            return x
        return F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Lesion probability at the input resolution."""
        x = self._resize(images.float() / 255.0, self.seg_size)
        prob = torch.sigmoid(self.segmenter(x).float())
        if self.seg_size != images.shape[-1]:
            prob = F.interpolate(prob, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return prob

    def classify(
        self, images: torch.Tensor, mask: torch.Tensor | None, mode: str | None = None
    ) -> torch.Tensor:
        """Melanoma probability of the classifier given images and (binary) masks."""
        x = images.float() / 255.0
        if self.cls_size != images.shape[-1]:
            x = self._resize(x, self.cls_size)
            if mask is not None:
                mask = F.interpolate(
                    mask.float(), size=(self.cls_size, self.cls_size), mode="nearest"
                )
        x = apply_input_mode(x, mask, mode or self.input_mode, self.crop_margin, self.cls_size)
        return torch.softmax(self.classifier(x).float(), dim=1)[:, 1]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = (self.segment(images) > self.mask_threshold).to(torch.uint8)
        prob = self.classify(images, mask if self.input_mode != "full" else None)
        return prob, mask
