"""The exercise checks: not done yet is a hint, a wrong answer is an error, a right one says so; an answer may not
call the reference it is checked against."""

import pytest
import torch

from shakegpt.exercises import exercise_check, forbidden


def unfinished() -> int:
    raise NotImplementedError("Exercise 1: your code here")


def test_an_unfinished_exercise_prints_a_hint_and_the_notebook_goes_on(capsys):
    with exercise_check("07", 1):
        assert unfinished() == 3
    assert capsys.readouterr().out == (
        "Exercise 1: not done yet. Complete the cell above and run this one again "
        "(a solution: solutions/07_solutions.ipynb).\n"
    )


def test_a_wrong_answer_fails_with_the_checks_message(capsys):
    with pytest.raises(AssertionError, match="top-p keeps 3 tokens, not 2"):
        with exercise_check("07", 2):
            assert 2 == 3, "top-p keeps 3 tokens, not 2"
    assert capsys.readouterr().out == ""


def test_a_right_answer_says_so(capsys):
    with exercise_check("01", 3):
        assert 1 + 1 == 2
    assert capsys.readouterr().out == "Exercise 3: correct.\n"


def test_a_not_implemented_error_from_pytorch_is_an_error_not_a_hint(capsys):
    """On Apple's MPS, PyTorch raises NotImplementedError for an operation it lacks: that is no unfinished cell."""
    with pytest.raises(NotImplementedError, match="not currently implemented for the MPS device"):
        with exercise_check("08", 1):
            raise NotImplementedError("The operator 'aten::_foo' is not currently implemented for the MPS device.")
    assert capsys.readouterr().out == ""


def test_a_forbidden_function_fails_inside_the_block_and_comes_back_after():
    import torch.nn.functional as F

    namespace = {"reference": lambda: "the reference"}
    with forbidden((F, "gelu"), (namespace, "reference")):
        with pytest.raises(AssertionError, match="gelu is what this check compares your answer with"):
            F.gelu(torch.zeros(1))
        with pytest.raises(AssertionError, match="reference is what this check compares"):
            namespace["reference"]()
        namespace["added"] = 1  # the block may add names of its own, which stay
    assert F.gelu(torch.zeros(1)).item() == 0 and namespace["reference"]() == "the reference"
    assert namespace["added"] == 1
