"""Training: token-budgeted WSD runs (one per model size), the checkpoint cache and its provenance."""
