"""Source index benchmark (see run.py)."""
