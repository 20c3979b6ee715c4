"""Metrics: plain functions over ComfyUI images (float32 ``B,H,W,C`` in 0..1) and feature sets."""
