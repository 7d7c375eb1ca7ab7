"""The gateway's benchmark: gateway vs the project's own passthrough floor, on loopback. Run `python bench/run.py`."""
