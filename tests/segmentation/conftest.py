"""Torch on one thread for these tiny models (much faster on a shared CPU); restored afterwards."""

import pytest

from lungdr.testing.segmenter import torch_threads


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with torch_threads(1):
        yield
