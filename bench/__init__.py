"""Benchmarks and evaluations of Delta Atlas: scripts run as `python bench/<name>.py` (see bench/README.md)."""
