"""The text side of the projection stage: the Ray Data actor that projects LoRA margin gradients.

``raytag.distributed.project.project_gradients`` drives both kinds of run — the same shards of
``project.batch_size`` pairs, the same store, resume and retry behaviour — and takes the pieces
that differ from :func:`text_projection_source`.
"""

from __future__ import annotations

import numpy as np

from raytag.distributed.project import ProjectionSource, ShardProjector
from raytag.grads import ProjectedGradients
from raytag.lm.grads import LoRAGradientProjector
from raytag.lm.stages import fit_lm_projector, lm_adapter_file, load_theta_star, project_examples
from raytag.rundir import RunDir


class TextShardProjector(ShardProjector):
    """One actor = one copy of θ* (LoRA model) and the run's tokenized examples; a pair's row is an
    example (``pairs.node``), projected ``examples_per_forward`` at a time."""

    def __init__(self, run_dir: str, projector_spec: dict, gpu: bool, examples_per_forward: int):
        self.examples_per_forward = examples_per_forward
        super().__init__(run_dir, projector_spec, gpu)

    def load_model(self, projector) -> None:
        model, self.data = load_theta_star(self.run, self.device)
        self.fast = LoRAGradientProjector(model, projector)

    def project_rows(self, rows: np.ndarray) -> ProjectedGradients:
        return project_examples(self.fast, self.data.encoded, self.pairs.node[rows], self.examples_per_forward,
                                self.device)


def text_projection_source(run: RunDir, config) -> ProjectionSource:
    return ProjectionSource(checkpoint=lm_adapter_file(run), fit_projector=fit_lm_projector,
                            actor=TextShardProjector,
                            actor_kwargs={"examples_per_forward": config.lm.batch_size})
