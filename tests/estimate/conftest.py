"""Fixtures for the estimation tests (the tiny problem itself lives in tiny_problem.py)."""

import pytest

from tiny_problem import Tiny, make_tiny


@pytest.fixture
def tiny() -> Tiny:
    return make_tiny()
