"""Decoding: batched, lossless speculative decoding with exact acceptance counters."""
