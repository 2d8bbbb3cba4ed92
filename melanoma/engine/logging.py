"""Per-run TensorBoard output: scalars, mask overlays, confusion matrix, ROC/PR curves, hparams.

Only the main process writes (``enabled``); every other rank gets a logger that does nothing.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

TB_DIR = "tensorboard"


def _outline(mask: torch.Tensor) -> torch.Tensor:
    """One-pixel border of a binary (N, 1, H, W) mask."""
    m = mask.float()
    eroded = -F.max_pool2d(-m, 3, stride=1, padding=1)
    return (m - eroded) > 0


def mask_overlays(images: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """uint8 images with the true outline in green and the predicted one in red, as a grid."""
    out = images.clone()
    for outline, colour in ((_outline(truth), (0, 255, 0)), (_outline(pred), (255, 0, 0))):
        for c, v in enumerate(colour):
            channel = out[:, c : c + 1]
            channel[outline] = v
    return make_grid(out, nrow=min(4, len(out)), padding=2)


def _figure_to_tensor(fig) -> torch.Tensor:
    import matplotlib.pyplot as plt
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    buf.seek(0)
    return torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()).permute(2, 0, 1)


def confusion_figure(cm: list[list[int]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2, 3))
    ax.imshow(np.asarray(cm), cmap="Blues")
    for (i, j), v in np.ndenumerate(np.asarray(cm)):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set_xticks([0, 1], ["benign", "melanoma"])
    ax.set_yticks([0, 1], ["benign", "melanoma"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return fig


def curve_figures(labels: np.ndarray, probs: np.ndarray):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from melanoma.metrics.curves import draw_pr, draw_roc

    roc, ax = plt.subplots(figsize=(3.2, 3))
    draw_roc(ax, labels, probs)
    ax.legend(loc="lower right")
    pr, ax = plt.subplots(figsize=(3.2, 3))
    draw_pr(ax, labels, probs)
    return roc, pr


class RunLogger:
    """TensorBoard writer for one run directory."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / TB_DIR))

    def scalars(self, epoch: int, values: dict, prefix: str) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
                self.writer.add_scalar(f"{prefix}/{k}", v, epoch)

    def overlays(
        self, epoch: int, images: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor
    ) -> None:
        if self.writer is not None and len(images):
            self.writer.add_image(
                "val/overlays", mask_overlays(images.cpu(), truth.cpu(), pred.cpu()), epoch
            )

    def inputs(self, epoch: int, images: torch.Tensor) -> None:
        if images.shape[1] == 4:  # image + mask channel: the image, dimmed off the lesion
            images = images[:, :3] * (0.4 + 0.6 * images[:, 3:])
        if images.shape[1] == 6:  # dual: the whole image beside its lesion crop
            images = torch.cat([images[:, :3], images[:, 3:]], dim=3)
        if self.writer is not None and len(images):
            grid = make_grid((images.clamp(0, 1) * 255).to(torch.uint8).cpu(), nrow=4, padding=2)
            self.writer.add_image("val/classifier_inputs", grid, epoch)

    def classification(self, epoch: int, labels: np.ndarray, probs: np.ndarray, cm) -> None:
        if self.writer is None or len(labels) == 0:
            return
        self.writer.add_image(
            "val/confusion_matrix", _figure_to_tensor(confusion_figure(cm)), epoch
        )
        if len(np.unique(labels)) == 2:
            roc, pr = curve_figures(labels, probs)
            self.writer.add_image("val/roc", _figure_to_tensor(roc), epoch)
            self.writer.add_image("val/pr", _figure_to_tensor(pr), epoch)
            self.writer.add_pr_curve("val/pr_curve", labels, probs, epoch)

    def hparams(self, hparams: dict, metrics: dict) -> None:
        if self.writer is None:
            return
        clean = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()
        }
        values = {
            f"hparam/{k}": v
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self.writer.add_hparams(clean, values, run_name=".")

    def epoch(self, task: str, epoch: int, train: dict, val: dict, examples: dict) -> None:
        """One epoch: training loss and learning rate, the validation figures, and the
        images (mask overlays, or the classifier's inputs, confusion matrix and curves)."""
        self.scalars(epoch, {"loss": train["loss"], "lr": train["lr"]}, "train")
        skip = ("threshold", "n", "n_melanoma")
        self.scalars(epoch, {k: v for k, v in val.items() if k not in skip}, "val")
        if task == "seg" and len(examples.get("images", [])):
            self.overlays(epoch, examples["images"], examples["masks"], examples["preds"])
        if task == "cls":
            if len(examples.get("inputs", [])):
                self.inputs(epoch, examples["inputs"])
            if "confusion_matrix" in val:
                self.classification(
                    epoch, examples["labels"], examples["probs"], val["confusion_matrix"]
                )

    def finish(self, config, history: list[dict], best_epoch: int) -> None:
        """The run's hyperparameters beside its best epoch's figures (HParams), then close."""
        if self.writer is not None and history:
            best = next((h for h in history if h["epoch"] == best_epoch), history[-1])
            self.hparams(_hparams(config), {f"best_{k}": v for k, v in best["val"].items()})
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _hparams(config) -> dict:
    """The train config as flat HParams (``section.key``), without file paths."""
    d = config.to_dict()
    out = {"task": config.task, "epochs": config.epochs, "seed": config.seed}
    for section in ("model", "optimizer", "scheduler", "loss", "data", "input"):
        for k, v in d[section].items():
            if k not in ("path", "weights_path") and v is not None:
                out[f"{section}.{k}"] = v
    return out
