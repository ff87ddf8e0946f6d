"""Budgets in SQLite: charged once per logical call, refunded when the call fails, two kinds."""
from __future__ import annotations

import pytest

from graytune.server.access.credentials import ApiKey
from graytune.server.compute.errors import OverLimit
from graytune.server.access.usage import GRADIENTS, SAMPLES, Budgets

KEY = ApiKey("k1", "0" * 64, "graybox", budget_samples=100, gradient_budget_samples=10)


@pytest.fixture
def budgets(tmp_path):
    return Budgets(tmp_path / "usage.sqlite")


def test_a_call_id_is_charged_once_across_retries_and_restarts(budgets, tmp_path):
    assert budgets.charge(KEY, 50, "call-1") == 50
    assert budgets.charge(KEY, 50, "call-1") == 50  # a retry owes the same charge, not another
    assert Budgets(tmp_path / "usage.sqlite").charge(KEY, 50, "call-1") == 50  # another server process
    assert budgets.used(KEY.id) == 50
    budgets.charge(KEY, 50, "call-2")
    assert budgets.remaining(KEY) == 0


def test_a_refund_gives_the_samples_back_and_forgets_the_call(budgets):
    budgets.charge(KEY, 30, "call-1")
    budgets.refund(KEY, 30, "call-1")
    assert budgets.used(KEY.id) == 0
    assert budgets.charge(KEY, 30, "call-1") == 30  # charged again: the first attempt gave nothing
    assert budgets.used(KEY.id) == 30


def test_the_budget_refuses_a_call_whole_and_charges_nothing(budgets):
    budgets.charge(KEY, 90, "a")
    with pytest.raises(OverLimit, match="10 of 100 samples left and this call needs 11"):
        budgets.charge(KEY, 11, "b")
    assert budgets.used(KEY.id) == 90


def test_gradient_samples_are_a_budget_of_their_own(budgets):
    budgets.charge(KEY, 100, "embed")
    assert budgets.charge(KEY, 10, "embed", GRADIENTS) == 10  # same call id, other kind
    with pytest.raises(OverLimit, match="gradient samples"):
        budgets.charge(KEY, 1, "more", GRADIENTS)
    assert (budgets.used(KEY.id, SAMPLES), budgets.used(KEY.id, GRADIENTS)) == (100, 10)


def test_call_ids_are_forgotten_after_a_day(tmp_path):
    now = [1000.0]
    budgets = Budgets(tmp_path / "usage.sqlite", clock=lambda: now[0])
    budgets.charge(KEY, 5, "old")
    now[0] += 2 * 24 * 3600
    budgets.charge(KEY, 5, "new")  # prunes what is older than a day
    assert budgets.charge(KEY, 5, "old") == 5 and budgets.used(KEY.id) == 15
