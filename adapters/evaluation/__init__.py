"""Scoring adapter sets on the CSR validation sets: through a running server (HTTP) or the PyTorch reference."""
