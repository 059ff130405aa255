"""Measurement: wall-clock speedup against plain decoding, and closed-form predictions."""
