"""The cascade: the chosen segmenters and classifiers as one model, built and scored on
validation, evaluated on the held-out test split (build, evaluate, model, ensemble)."""
