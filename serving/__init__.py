"""The exported cascade as a Ray Serve application (``melanoma serve``)."""
