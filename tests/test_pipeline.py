import json

import numpy as np

from raytag.pipeline import STAGE_NAMES


def test_tiny_run_outputs(tiny_run):
    run, config = tiny_run
    tasks = json.loads(run.tasks_json.read_text())
    assert tasks["num_tasks"] == 8 and tasks["regime"] == "seeds"
    assert run.checkpoint.is_file()
    train = json.loads(run.train_metrics.read_text())
    assert len(train["epochs"]) == config.training.epochs
    affinity = np.load(run.affinity)
    assert affinity.shape == (8, 8) and np.allclose(affinity, affinity.T)
    groups = json.loads(run.groups_json.read_text())
    assert sorted(name for group in groups["groups"] for name in group) == sorted(t["name"] for t in tasks["tasks"])
    assert "reason" in groups["recommendation"]
    for stage in ("prepare", "train", "project", "estimate", "affinity", "cluster"):
        assert run.is_done(stage, __import__("raytag.pipeline", fromlist=["stage_hash"]).stage_hash(config, stage))
    assert STAGE_NAMES[0] == "prepare"
