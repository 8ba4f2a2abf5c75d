"""DOG regrouping of BADIT's rank-one components (methods.md §2, training only).

Each rank-one component i of a BADIT layer is the pair (row A_i, column B_:,i). Its last-step gradient
[∇A_i ; ∇B_:,i] is normalised onto the unit sphere; the K·r unit vectors are clustered into K groups of
exactly r (spherical k-means with a balanced assignment), and the components are permuted so that
expert e holds group e. Centroids start from the current experts (no random draw), so a regrouping is
deterministic and keeps an expert's slot when its components already agree.
"""

from __future__ import annotations

import torch

_ITERATIONS = 10


def balanced_assignment(similarity: torch.Tensor, capacity: int) -> torch.Tensor:
    """Cluster (k,) of each of the k items, at most `capacity` per cluster, best similarities first (greedy)."""
    items, clusters = similarity.shape  # (k, K)
    order = torch.argsort(similarity.flatten(), descending=True, stable=True)
    cluster_of = torch.full((items,), -1, dtype=torch.long)
    load = [0] * clusters
    for flat in order.tolist():
        item, cluster = divmod(flat, clusters)
        if cluster_of[item] < 0 and load[cluster] < capacity:
            cluster_of[item] = cluster
            load[cluster] += 1
    return cluster_of


def regroup_permutation(grad_A: torch.Tensor, grad_B: torch.Tensor, num_experts: int, rank: int) -> torch.Tensor:
    """Permutation (K·r,) of the components: new component j is old component perm[j]."""
    vectors = torch.cat([grad_A, grad_B.T], dim=1).to(torch.float32)  # (k, in + out)
    vectors = vectors / torch.linalg.vector_norm(vectors, dim=1, keepdim=True).clamp(min=1e-12)
    cluster_of = torch.arange(vectors.shape[0]) // rank  # (k,) current experts
    for _ in range(_ITERATIONS):
        centroids = torch.zeros(num_experts, vectors.shape[1]).index_add_(0, cluster_of, vectors)  # (K, in + out)
        centroids = centroids / torch.linalg.vector_norm(centroids, dim=1, keepdim=True).clamp(min=1e-12)
        updated = balanced_assignment(vectors @ centroids.T, rank)  # (k,)
        if torch.equal(updated, cluster_of):
            break
        cluster_of = updated
    return torch.argsort(cluster_of * vectors.shape[0] + torch.arange(vectors.shape[0]))  # by cluster, then index
