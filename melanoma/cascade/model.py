"""The cascade: segment, mask or crop, classify. One module, exported as one artifact.

Input: uint8 images (N, 3, S, S), squashed to S x S by ``melanoma.data.io.load_image`` (the
resize every training image went through); S is the largest size a member loads images
at, so a classifier whose lesion crop comes from a larger copy (``input.source_size``)
cuts it from the full-size input inside the graph while the segmenters see it downsized.
Output: melanoma probability (N,) and the binary lesion mask (N, 1, S, S). Normalisation
lives inside each model; masking/cropping is ``apply_input_mode``, the function training
used.

Either stage may be an ensemble: the mask probability is the weighted mean of the
segmenters' probabilities, the melanoma probability the weighted mean of the classifiers'
(each classifier with its own input size and mode). With ``seg_tta`` / ``cls_tta`` a stage
also averages over the eight symmetries of the square (flips and 90-degree rotations),
which dermoscopy images do not care about. ``mask_cleanup`` keeps the largest region of
the output mask with its holes filled (``melanoma.postprocess``); it is applied outside the
graph, to the mask handed out, by evaluation and ``melanoma predict`` alike. The melanoma
probability leaves the graph through the cascade's calibration (``cascade.calibration``),
the identity unless the build fitted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from melanoma.cascade.calibration import CLIP, Calibration
from melanoma.data.transforms import apply_input_mode, resize_mask_tensor
from melanoma.models.segmenter import segment_at


@dataclass(frozen=True)
class SegmenterSpec:
    """How one segmenter of the cascade is run: its input size and ensemble weight."""

    size: int
    weight: float = 1.0


@dataclass(frozen=True)
class ClassifierSpec:
    """How one classifier of the cascade is run: size, input mode, crop margin, weight, and
    the size of the copy its lesion crop is cut from (None: ``size``)."""

    size: int
    mode: str
    crop_margin: float = 0.15
    weight: float = 1.0
    source_size: int | None = None

    @property
    def load_size(self) -> int:
        """The size the image and mask are brought to before ``apply_input_mode``."""
        return self.source_size or self.size


SYMMETRIES = 8


class ProbabilityMap(nn.Module):
    """A :class:`Calibration` in torch operators that ONNX has (log, sigmoid, clamp), so the
    exported graph emits the calibrated probability."""

    def __init__(self, calibration: Calibration | None = None):
        super().__init__()
        self.calibration = calibration or Calibration()
        c = self.calibration
        self.register_buffer("a", torch.tensor(c.a), persistent=False)
        self.register_buffer("b", torch.tensor(c.b), persistent=False)
        x, y = torch.tensor(c.x, dtype=torch.float32), torch.tensor(c.y, dtype=torch.float32)
        self.register_buffer("x", x, persistent=False)
        self.register_buffer("y", y, persistent=False)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        method = self.calibration.method
        if method == "none":
            return p
        if method == "isotonic":
            # Linear interpolation between the knots as a sum of clamped ramps (np.interp;
            # constant outside them): no gather or searchsorted in the graph.
            out = torch.zeros_like(p) + self.y[0]
            for i in range(len(self.calibration.x) - 1):
                width = (self.x[i + 1] - self.x[i]).clamp(min=1e-12)
                ramp = ((p - self.x[i]) / width).clamp(0.0, 1.0)
                out = out + (self.y[i + 1] - self.y[i]) * ramp
            return out
        q = p.clamp(CLIP, 1 - CLIP)
        return torch.sigmoid(self.a * torch.log(q / (1 - q)) + self.b)


def _symmetries(x: torch.Tensor) -> torch.Tensor:
    """The eight images of ``x`` under the symmetries of the square (dihedral group D4),
    stacked along the batch: one forward pass of 8N images, one copy of each network in
    the exported graph (eight unrolled copies took minutes to export)."""
    rotations = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    return torch.cat(rotations + [torch.flip(r, dims=(-1,)) for r in rotations])


def _views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8N outputs of a stacked batch, split back into the 8 views of N."""
    return list(x.reshape(SYMMETRIES, -1, *x.shape[1:]).unbind(0))


def _undo(x: torch.Tensor, index: int) -> torch.Tensor:
    """The inverse of the ``index``-th transform of ``_symmetries``."""
    if index >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, -(index % 4), dims=(-2, -1))


class Cascade(nn.Module):
    def __init__(
        self,
        segmenters: list[nn.Module],
        classifiers: list[nn.Module],
        *,
        input_size: int,
        seg_specs: list[SegmenterSpec],
        cls_specs: list[ClassifierSpec],
        mask_threshold: float = 0.5,
        seg_tta: bool = False,
        cls_tta: bool = False,
        mask_cleanup: bool = False,
        calibration: Calibration | None = None,
    ):
        super().__init__()
        if not segmenters or len(segmenters) != len(seg_specs):
            raise ValueError(f"need one spec per segmenter, got {len(seg_specs)} for {segmenters}")
        if not classifiers or len(classifiers) != len(cls_specs):
            raise ValueError(f"need one spec per classifier, got {len(cls_specs)}")
        self.segmenters = nn.ModuleList(segmenters)
        self.classifiers = nn.ModuleList(classifiers)
        self.input_size = input_size
        self.seg_specs, self.cls_specs = list(seg_specs), list(cls_specs)
        self.mask_threshold = mask_threshold
        self.seg_tta, self.cls_tta = seg_tta, cls_tta
        # Connected components have no ONNX operator: the clean-up runs on the output mask
        # after the graph, and the classifiers see the thresholded mask, as in training.
        self.mask_cleanup = mask_cleanup
        self.calibrate = ProbabilityMap(calibration)

    @property
    def tta(self) -> bool:
        """Whether either stage averages over the symmetries (setting it sets both)."""
        return self.seg_tta or self.cls_tta

    @tta.setter
    def tta(self, on: bool) -> None:
        self.seg_tta = self.cls_tta = on

    @property
    def input_mode(self) -> str:
        """The classifiers' input mode, or ``mixed`` when members differ."""
        modes = {s.mode for s in self.cls_specs}
        return modes.pop() if len(modes) == 1 else "mixed"

    @property
    def needs_mask(self) -> bool:
        return any(s.mode != "full" for s in self.cls_specs)

    @staticmethod
    def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
        if x.shape[-1] == size and x.shape[-2] == size:
            return x
        return F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )

    def _segment_once(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for model, spec in zip(self.segmenters, self.seg_specs, strict=True):
            prob = segment_at(model, x, spec.size)
            total = prob * spec.weight if total is None else total + prob * spec.weight
        return total / sum(s.weight for s in self.seg_specs)

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Lesion probability at the input resolution."""
        x = images.float() / 255.0
        if not self.seg_tta:
            return self._segment_once(x)
        views = _views(self._segment_once(_symmetries(x)))
        return torch.stack([_undo(v, i) for i, v in enumerate(views)]).mean(dim=0)

    def _classify_once(
        self, x: torch.Tensor, mask: torch.Tensor | None, mode: str | None
    ) -> torch.Tensor:
        total = None
        for model, spec in zip(self.classifiers, self.cls_specs, strict=True):
            m = mode or spec.mode
            # As in training: image and mask at the size the classifier loads them at
            # (its source size for a crop from a larger copy), then its input mode.
            load = spec.load_size
            xi, mi = x, mask
            if load != x.shape[-1]:
                xi = self._resize(x, load)
                if mi is not None:
                    mi = resize_mask_tensor(mi, load)
            inputs = apply_input_mode(
                xi, mi if m != "full" else None, m, spec.crop_margin, spec.size
            )
            prob = torch.softmax(model(inputs).float(), dim=1)[:, 1]
            total = prob * spec.weight if total is None else total + prob * spec.weight
        return total / sum(s.weight for s in self.cls_specs)

    def classify(
        self, images: torch.Tensor, mask: torch.Tensor | None, mode: str | None = None
    ) -> torch.Tensor:
        """Calibrated melanoma probability given images and (binary) masks; ``mode`` runs
        every classifier in that input mode instead of its own (``full``: no mask needed)."""
        return self.calibrate(self.classify_uncalibrated(images, mask, mode))

    def classify_uncalibrated(
        self, images: torch.Tensor, mask: torch.Tensor | None, mode: str | None = None
    ) -> torch.Tensor:
        """The classifiers' (weighted, TTA-averaged) probability, before calibration."""
        x = images.float() / 255.0
        if not self.cls_tta:
            return self._classify_once(x, mask, mode)
        masks = _symmetries(mask) if mask is not None else None
        probs = self._classify_once(_symmetries(x), masks, mode)
        return probs.reshape(SYMMETRIES, -1).mean(dim=0)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = (self.segment(images) > self.mask_threshold).to(torch.uint8)
        prob = self.classify(images, mask if self.needs_mask else None)
        return prob, mask
