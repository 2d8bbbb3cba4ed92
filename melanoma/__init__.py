"""melanoma-search: a searched, honestly evaluated two-stage melanoma cascade."""

__version__ = "0.1.0"
