"""Parsing of label values as they appear in the various ISIC CSVs."""

from __future__ import annotations

_POSITIVE = {"1", "1.0", "malignant", "melanoma", "mel", "true", "yes"}
_NEGATIVE = {"0", "0.0", "benign", "false", "no"}


def parse_binary_label(value: object) -> int:
    """Map '1', '1.0', 'malignant', 'melanoma', 'true' to 1 and '0', 'benign', 'false' to 0.

    Raises ValueError for anything else so that a misread column never becomes a label.
    """
    text = str(value).strip().lower()
    if text in _POSITIVE:
        return 1
    if text in _NEGATIVE:
        return 0
    raise ValueError(
        f"unrecognised label {value!r}: expected 0/1, 0.0/1.0, benign/malignant or true/false"
    )
