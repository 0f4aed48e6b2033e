"""Synthetic videos with exact ground truth: `scene` draws and renders them, `corpus` writes shards."""
