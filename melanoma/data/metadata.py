"""Patient and lesion metadata in one vocabulary: age in years, sex, anatomical site.

The ISIC layouts write them differently (``age_approximate`` or ``age_approx``; ``male`` or
empty; ``anterior torso`` in 2019, ``torso`` in 2020). Every reader turns them into a
:class:`Metadata`, where ``None`` means the data set has no such field at all and
``unknown`` that it has the field but not the value for this image. A value that cannot be
read is an error naming the image, never a silent unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

UNKNOWN = "unknown"
SEXES = ("female", "male", UNKNOWN)
SITES = (
    "head/neck",
    "upper extremity",
    "lower extremity",
    "torso",
    "palms/soles",
    "oral/genital",
    UNKNOWN,
)
AGE_BANDS = ((0, 30, "<30"), (30, 45, "30-44"), (45, 60, "45-59"), (60, 75, "60-74"))
OLDEST_BAND = "75+"
MISSING = ("", "unknown", "na", "n/a", "nan", "none", "null", "?")

_SEX_WORDS = {"female": "female", "f": "female", "woman": "female", "male": "male", "m": "male"}
_SITE_WORDS = {
    "head/neck": "head/neck",
    "head": "head/neck",
    "neck": "head/neck",
    "face": "head/neck",
    "scalp": "head/neck",
    "upper extremity": "upper extremity",
    "upper limb": "upper extremity",
    "arm": "upper extremity",
    "lower extremity": "lower extremity",
    "lower limb": "lower extremity",
    "leg": "lower extremity",
    "torso": "torso",
    "anterior torso": "torso",
    "posterior torso": "torso",
    "lateral torso": "torso",
    "trunk": "torso",
    "back": "torso",
    "chest": "torso",
    "abdomen": "torso",
    "palms/soles": "palms/soles",
    "acral": "palms/soles",
    "oral/genital": "oral/genital",
}


@dataclass(frozen=True)
class Metadata:
    """An image's age (years, or None when unknown), sex and site (``unknown`` when not
    known; None when the data set does not record the field)."""

    age: float | None = None
    sex: str | None = None
    site: str | None = None
    has_age: bool = False  # the data set records ages (so None means unknown)


def parse_age(value: str | None, image_id: str) -> float | None:
    """Years as a number, or None for an empty or explicitly unknown value."""
    text = (value or "").strip().lower()
    if text in MISSING:
        return None
    try:
        age = float(text)
    except ValueError:
        raise ValueError(
            f"image {image_id}: age {value!r} is not a number of years (expected 0-120, or "
            "empty/unknown)"
        ) from None
    if not 0 <= age <= 120:
        raise ValueError(f"image {image_id}: age {value!r} is outside 0-120 years")
    return age


def parse_sex(value: str | None, image_id: str) -> str:
    text = (value or "").strip().lower()
    if text in MISSING:
        return UNKNOWN
    if text not in _SEX_WORDS:
        raise ValueError(
            f"image {image_id}: sex {value!r} is not one of female/f, male/m or empty/unknown"
        )
    return _SEX_WORDS[text]


def parse_site(value: str | None, image_id: str) -> str:
    text = " ".join((value or "").strip().lower().replace("_", " ").split())
    if text in MISSING:
        return UNKNOWN
    if text not in _SITE_WORDS:
        raise ValueError(
            f"image {image_id}: anatomical site {value!r} is not one we know "
            f"({', '.join(sorted(_SITE_WORDS))}, or empty/unknown)"
        )
    return _SITE_WORDS[text]


_PARSERS = {"age": parse_age, "sex": parse_sex, "site": parse_site}


def parse_metadata(image_id: str, raw: dict[str, str | None]) -> tuple[Metadata, list[str]]:
    """Metadata from raw strings of the fields the data set records (``age``, ``sex``,
    ``site``; the others stay None), and an error message naming the image for each value
    that cannot be read (that field then counts as unknown)."""
    values: dict = {}
    errors = []
    for name, value in raw.items():
        try:
            values[name] = _PARSERS[name](value, image_id)
        except ValueError as err:
            errors.append(str(err))
            values[name] = None if name == "age" else UNKNOWN
    return Metadata(**values, has_age="age" in raw), errors


def age_band(age: float | None) -> str:
    """The subgroup band of an age: <30, 30-44, 45-59, 60-74, 75+ or unknown."""
    if age is None:
        return UNKNOWN
    for low, high, name in AGE_BANDS:
        if low <= age < high:
            return name
    return OLDEST_BAND


def subgroup_fields(metadata: Metadata | None) -> dict[str, str]:
    """The subgroup an image falls in for each field its data set records."""
    if metadata is None:
        return {}
    out = {}
    if metadata.has_age:
        out["age"] = age_band(metadata.age)
    if metadata.sex is not None:
        out["sex"] = metadata.sex
    if metadata.site is not None:
        out["site"] = metadata.site
    return out


def coverage(records: list[Metadata | None]) -> dict[str, dict[str, int]]:
    """Per field the data set records: how many images have a known value, how many an
    unknown one, and the count of each value (age as bands)."""
    out: dict[str, dict] = {}
    for record in records:
        for name, value in subgroup_fields(record).items():
            entry = out.setdefault(name, {"known": 0, "unknown": 0, "values": {}})
            entry["unknown" if value == UNKNOWN else "known"] += 1
            entry["values"][value] = entry["values"].get(value, 0) + 1
    for entry in out.values():
        entry["values"] = dict(sorted(entry["values"].items(), key=lambda kv: value_order(kv[0])))
    return out


def value_order(value: str) -> tuple[int, str]:
    """Age bands young to old, then the sexes and sites in vocabulary order, unknown last."""
    order = [name for _, _, name in AGE_BANDS] + [OLDEST_BAND, *SEXES[:-1], *SITES[:-1]]
    return (order.index(value) if value in order else len(order) + (value == UNKNOWN), value)
