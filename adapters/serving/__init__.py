"""Serving-side adapter machinery shared by every method: fixed-capacity stacked weight banks, the
grouped (segmented) matmul they run on, and the per-step rows each bank reads.

Pure torch, device-agnostic. Each method folder provides its own bank (`adapters/<method>/serving.py`)
and registers it with its `MethodSpec`; the engine layer only iterates over registered banks.
"""
