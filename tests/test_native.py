"""The child-process runner for native peers: results come back, and a crash is a failure that
names the signal instead of killing pytest."""

from __future__ import annotations

import pytest

from tests.native import run_llama_cpp


def test_result_comes_back_from_the_child():
    got = run_llama_cpp("result = (llama_cpp.__version__, np.arange(n).sum())", n=5)
    assert isinstance(got[0], str) and got[1] == 10


def test_a_crash_in_the_child_is_a_failure_naming_the_signal():
    with pytest.raises(AssertionError, match=r"llama\.cpp died with SIGILL"):
        run_llama_cpp("import os, signal; os.kill(os.getpid(), signal.SIGILL)")


def test_an_exception_in_the_child_is_reported():
    with pytest.raises(AssertionError, match="ValueError: boom"):
        run_llama_cpp("raise ValueError('boom')")
