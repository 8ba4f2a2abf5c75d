"""Offline converters from foreign checkpoints to orthoserve adapter sets (convert once, then load)."""
