"""BADIT: Basic Ability Decomposition for Instruction Tuning (methods.md §2); its spec is `method.METHOD`."""
