"""Data: the procedural fundus generator, dataset manifests, torch datasets, leakage checks."""
