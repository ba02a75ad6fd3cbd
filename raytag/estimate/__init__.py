"""Subset estimation: sufficient statistics, subset estimators, affinity and validation metrics.

Pure numpy/torch (no ray): arrays in, arrays out. ``raytag.distributed.estimate`` runs the
estimators on a pool of Ray actors.
"""

from raytag.estimate.affinity import affinity_matrix, higher_order_surrogate, task_scores
from raytag.estimate.estimators import (ESTIMATORS, LinearizedFineTune, NewtonLogistic,
                                        OneStepNewton, SeedLogistic, SubsetEstimator)
from raytag.estimate.metrics import METRIC_KEYS, validation_metrics
from raytag.estimate.stats import TRAIN, VAL, GradientData
from raytag.estimate.subsets import (ValidationDesign, check_subsets, membership_matrix,
                                     sample_subsets, subsets_from_names, validation_design)

__all__ = [
    "ESTIMATORS", "METRIC_KEYS", "TRAIN", "VAL", "GradientData", "LinearizedFineTune",
    "NewtonLogistic", "OneStepNewton", "SeedLogistic", "SubsetEstimator", "ValidationDesign",
    "affinity_matrix", "check_subsets", "higher_order_surrogate", "membership_matrix",
    "sample_subsets", "subsets_from_names", "task_scores", "validation_design",
    "validation_metrics",
]
