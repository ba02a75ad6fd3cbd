"""Tiny text fixtures: a few vendored tasks, a character tokenizer and a 2-layer LoRA Llama."""

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import torch  # noqa: E402

from raytag.lm.config import VENDORED_TASKS  # noqa: E402
from raytag.lm.stages import reference_slots  # noqa: E402
from raytag.lm.tasks import load_text_tasks  # noqa: E402
from raytag.lm.tokenize import CharTokenizer, encode_examples  # noqa: E402

TASKS = ["sports_understanding", "navigate", "social_support", "presuppositions_as_nli"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_text():
    """``(encoded, tasks)`` for 12 examples of each of 4 tasks (2- and 3-way), prompts cut to 48 chars."""
    tasks = [type(t)(t.name, t.inputs[:12], t.targets[:12], t.choices[:12])
             for t in load_text_tasks(VENDORED_TASKS, TASKS)]
    inputs = [x for t in tasks for x in t.inputs]
    choices = [c for t in tasks for c in t.choices]
    tokenizer = CharTokenizer.fit(inputs + [c for cs in choices for c in cs], min_count=1)
    reference = reference_slots(choices, np.concatenate([t.target_index for t in tasks]))
    return encode_examples(tokenizer, inputs, choices, reference, max_length=48), tasks, tokenizer


@pytest.fixture(scope="session")
def text_run(ray_session, tmp_path_factory):
    """A tiny text run with prepare → cluster done through the pipeline (Ray Train, Ray Data, actors);
    shared and read-only: tests that write copy it with ``run_helpers.copy_run``."""
    from lm_helpers import text_config, write_toy_tasks

    from raytag.pipeline import RUN_STAGES, run_stage, save_config
    from raytag.rundir import RunDir

    root = tmp_path_factory.mktemp("lm_run")
    config = text_config(write_toy_tasks(root / "tasks"))
    run = RunDir(root / "run")
    save_config(run, config)
    for stage in RUN_STAGES:
        if stage != "report":
            run_stage(run, config, stage)
    return run, config
