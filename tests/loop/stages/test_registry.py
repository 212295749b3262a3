"""The stage registry: its declarations match what each stage module's SQL does."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
from sealong.loop.stages.registry import STAGE_NAMES, STAGES, stage_spec

from ...store.sql_scan import read_tables, written_tables

HELPERS = {"questions", "round_questions", "adapters"}  # what base.py and common.py read for the stages
BOOKKEEPING = {"runs", "rounds", "stages"}  # written by sealong.store.state, never by a stage's SQL


def _source(module: str) -> str:
    """A module's source, found without importing it (stage modules import torch)."""
    return Path(importlib.util.find_spec(module).origin).read_text()


def test_the_stages_run_in_the_papers_order():
    assert STAGE_NAMES == ("sample", "score", "pairs", "train", "eval", "promote")


@pytest.mark.parametrize("spec", STAGES, ids=STAGE_NAMES)
def test_each_stages_declared_writes_are_what_its_sql_writes(spec):
    source = _source(spec.module)
    functions = {n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
    assert "run" in functions, f"{spec.module} has no run(ctx)"
    assert written_tables(source) == spec.writes
    assert not spec.writes & BOOKKEEPING


@pytest.mark.parametrize("spec", STAGES, ids=STAGE_NAMES)
def test_each_stages_declared_reads_cover_what_its_sql_reads(spec):
    found = read_tables(_source(spec.module))
    assert found <= spec.reads
    assert spec.reads - found <= HELPERS


def test_the_shared_helpers_read_only_what_the_registry_allows_for():
    helpers = _source("sealong.loop.stages.base") + _source("sealong.loop.stages.policy")
    assert read_tables(helpers) <= HELPERS | BOOKKEEPING
    assert written_tables(helpers) == set()


def test_an_unknown_stage_is_named_with_the_known_ones():
    with pytest.raises(KeyError, match="sample, score, pairs, train, eval, promote"):
        stage_spec("smaple")
