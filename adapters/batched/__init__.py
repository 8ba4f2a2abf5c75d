"""Batched serving operators: many adapter sets and tasks in one forward pass, grouped by set.

Pure torch (runs on CPU and CUDA). Each operator takes the rows of one kind of adapter and a list of
groups (one per resident set present in the batch); the per-request references in
`adapters/*/math.py` define what they must compute.
"""
