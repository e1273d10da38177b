"""Checkpoints: fetch by scheme, verify, cache by sha256, parse against a layout."""
