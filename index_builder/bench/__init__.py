"""The index benchmarks: `chan bench search` (search.py) and `chan bench add` (add.py)."""
