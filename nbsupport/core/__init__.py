"""Core: paths, profiles, device and environment, checkpoints, run records; what every layer uses."""
