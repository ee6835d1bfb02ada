"""The exercise checks: not done yet is a hint, a wrong answer is an error, a right one says so."""

import pytest

from shakegpt.exercises import exercise_check


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
