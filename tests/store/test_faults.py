"""sealong.store.faults.tamper: the point where a value (train's loss) is made NaN or inf, by name."""

from __future__ import annotations

import math

import pytest
from sealong.store import faults


@pytest.fixture
def in_train(monkeypatch):
    """This process as the train stage process of round 0 (what stage_main's set_context records)."""
    monkeypatch.setitem(faults._context, "stage", "train")
    monkeypatch.setitem(faults._context, "round", 0)


def test_tamper_changes_nothing_when_no_fault_is_set(in_train, monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    value = object()
    assert faults.tamper("loss", 1, value) is value


@pytest.mark.parametrize("action", ["nan", "inf"])
def test_tamper_corrupts_only_the_named_micro_batch(in_train, monkeypatch, action: str):
    monkeypatch.setenv(faults.ENV, f"train:loss@2:{action}")
    assert faults.tamper("loss", 1, 2.0) == 2.0
    got = faults.tamper("loss", 2, 2.0)
    assert math.isnan(got) if action == "nan" else got == math.inf
    assert faults.tamper("loss", 3, 2.0) == 2.0


def test_tamper_fires_once_with_a_fault_dir(in_train, monkeypatch, tmp_path):
    monkeypatch.setenv(faults.ENV, "train:loss@1:nan")
    monkeypatch.setenv(faults.ONCE_DIR_ENV, str(tmp_path))
    assert math.isnan(faults.tamper("loss", 1, 1.0))
    assert faults.tamper("loss", 1, 1.0) == 1.0  # claimed: a retried attempt trains normally
    assert (tmp_path / faults.marker_name("train:loss@1:nan")).is_file()


def test_tamper_matches_only_its_stage_and_round(monkeypatch):
    monkeypatch.setenv(faults.ENV, "train#1:loss@1:nan")
    monkeypatch.setitem(faults._context, "stage", None)
    assert faults.tamper("loss", 1, 1.0) == 1.0  # no stage: a worker node's rank, a test's process
    monkeypatch.setitem(faults._context, "stage", "train")
    monkeypatch.setitem(faults._context, "round", 0)
    assert faults.tamper("loss", 1, 1.0) == 1.0
    monkeypatch.setitem(faults._context, "round", 1)
    assert math.isnan(faults.tamper("loss", 1, 1.0))
