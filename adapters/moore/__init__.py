"""MoORE: Mixture of Orthogonal Rank-one Experts (methods.md §1); its spec is `method.METHOD`."""
