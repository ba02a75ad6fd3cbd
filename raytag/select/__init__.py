"""Target-task source selection (GradEx): which auxiliary tasks to train a target with. No ray."""

from raytag.select.sources import (
    greedy_forward_selection,
    random_sources,
    rank_by_gradient_cosine,
    rank_by_marginal_effect,
    rank_by_representation_cosine,
    sample_source_subsets,
)

__all__ = [
    "greedy_forward_selection",
    "random_sources",
    "rank_by_gradient_cosine",
    "rank_by_marginal_effect",
    "rank_by_representation_cosine",
    "sample_source_subsets",
]
