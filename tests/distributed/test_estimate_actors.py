import numpy as np
import pytest
import ray
import torch

from raytag.distributed.estimate import EstimationPool, batch_path, run_estimation
from raytag.estimate.estimators import LinearizedFineTune
from raytag.estimate.subsets import sample_subsets
from raytag.estimate.synthetic import synthetic_gradient_data


def in_process(estimator, subsets, batch_size):
    """The same computation in this process, with the actors' thread count and batches
    (float32 GEMMs round differently with other shapes or thread counts)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return estimator.predict(subsets, batch_size=batch_size)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def problem():
    data = synthetic_gradient_data(n_tasks=12, n_train=40, n_val=30, d=8, seed=1)
    estimator = LinearizedFineTune(lr=0.5, steps=20).fit(data)
    return estimator, sample_subsets(12, m=45, size=4, seed=2)


def test_actor_results_equal_in_process(ray_session, problem, tmp_path):
    estimator, subsets = problem
    got = run_estimation(estimator, subsets, tmp_path, num_actors=2, batch_size=8, progress=False)
    np.testing.assert_array_equal(got, in_process(estimator, subsets, 8))
    assert sorted(p.name for p in tmp_path.glob("batch_*.npy")) == [f"batch_{b:05d}.npy" for b in range(6)]


def test_killed_actors_restart_and_result_is_identical(ray_session, problem, tmp_path):
    estimator, subsets = problem
    pool = EstimationPool(estimator, num_actors=2)
    killed = []

    def kill_other_once(batch_id):
        # batches 0 and 1 start on actors 0 and 1: when one finishes, the other is mid-batch
        if not killed:
            ray.kill(pool.actors[1 - batch_id], no_restart=False)
            killed.append(batch_id)

    try:
        got = pool.run(subsets, tmp_path, batch_size=4, progress=False, on_batch=kill_other_once)
    finally:
        pool.shutdown()
    assert killed
    np.testing.assert_array_equal(got, in_process(estimator, subsets, 4))


def test_actor_dead_for_good_is_replaced(ray_session, problem, tmp_path):
    estimator, subsets = problem
    pool = EstimationPool(estimator, num_actors=1, max_restarts=0, max_task_retries=0)
    first = pool.actors[0]

    def kill_for_good(batch_id):
        if pool.actors[0] is first:
            ray.kill(first, no_restart=True)

    try:
        got = pool.run(subsets, tmp_path, batch_size=8, progress=False, on_batch=kill_for_good)
        assert pool.actors[0] is not first
    finally:
        pool.shutdown()
    np.testing.assert_array_equal(got, in_process(estimator, subsets, 8))


def test_resume_computes_only_missing_batches(ray_session, problem, tmp_path):
    estimator, subsets = problem
    expected = in_process(estimator, subsets, 10)
    pool = EstimationPool(estimator, num_actors=1)
    computed = []
    try:
        pool.run(subsets, tmp_path, batch_size=10, progress=False)
        for b in (1, 4):
            batch_path(tmp_path, b).unlink()
        got = pool.run(subsets, tmp_path, batch_size=10, progress=False, on_batch=computed.append)
        assert sorted(computed) == [1, 4]
        np.testing.assert_array_equal(got, expected)
        # other subsets: the stale batches are discarded, not mixed in
        other = sample_subsets(12, m=45, size=4, seed=3)
        computed.clear()
        got_other = pool.run(other, tmp_path, batch_size=10, progress=False, on_batch=computed.append)
        assert sorted(computed) == [0, 1, 2, 3, 4]
        np.testing.assert_array_equal(got_other, in_process(estimator, other, 10))
    finally:
        pool.shutdown()


def test_unfitted_estimator_is_refused(ray_session):
    with pytest.raises(ValueError, match="not fitted"):
        EstimationPool(LinearizedFineTune(lr=0.1, steps=1))
