"""`sealong-loop report`: PNG plots that open, and a Markdown summary that links every one of them."""

from __future__ import annotations

import re
import time
from pathlib import Path

import matplotlib.image
import pytest
from PIL import Image
from sealong.loop.report import PLOTS, collect, write_report
from sealong.store.db import connect

from ..conftest import cli
from .test_monitor import tiny_ops_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_ops_run(tmp_path_factory)


def _check_pngs(out: Path) -> None:
    for name in PLOTS:
        with Image.open(out / name) as im:
            im.verify()
        pixels = matplotlib.image.imread(out / name)
        assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 400, name
        assert pixels.std() > 0.01, f"{name} is blank"


def test_report_writes_pngs_and_linked_markdown(run_dir: Path, tmp_path: Path):
    out = tmp_path / "rep"
    proc = cli("report", "--workdir", str(run_dir), "--out", str(out), check=True)
    assert proc.stdout.startswith(f"wrote 5 files to {out}")
    _check_pngs(out)
    md = (out / "report.md").read_text()
    links = set(re.findall(r"\]\(([^)]+\.png)\)", md))
    assert links == set(PLOTS) and all((out / name).is_file() for name in links)
    assert "# sealong-loop report: run 'tiny-random'" in md and "status: **finished**" in md
    assert "champion: **adapter-r001**" in md
    table = [line for line in md.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [row.split(" | ")[0] for row in table] == ["| 0", "| 1"]
    assert all("promoted" in row for row in table)


def test_report_defaults_to_workdir_report(run_dir: Path):
    proc = cli("report", "--workdir", str(run_dir), check=True)
    assert str(run_dir / "report") in proc.stdout
    _check_pngs(run_dir / "report")


def test_report_data_covers_the_mbr_diagnostics(run_dir: Path):
    data = collect(connect(run_dir, readonly=True))
    for r in data["rounds"]:
        assert r["mbr_scores"] and len(r["chosen_rejected"]) == r["pairs"]
        assert all(p["chosen"] >= p["rejected"] for p in r["chosen_rejected"])  # chosen = the MBR-best sample
        assert set(r["stage_seconds"]) == {"sample", "score", "pairs", "train", "eval", "promote"}
        assert r["losses"] and "mbr/embedding" in r["diagnostics"]


def test_report_on_a_run_without_rounds_draws_placeholders(tmp_path: Path):
    db = connect(tmp_path / "w")
    db.execute(
        "INSERT INTO runs (name, config_json, created_at, max_rounds) VALUES ('empty', '{}', ?, 3)",
        (time.time(),),
    )
    written = write_report(connect(tmp_path / "w", readonly=True), tmp_path / "rep")
    assert [p.name for p in written] == [*PLOTS, "report.md"]
    for name in PLOTS:
        with Image.open(tmp_path / "rep" / name) as im:
            im.verify()
    assert "rounds: 0 of 3" in (tmp_path / "rep" / "report.md").read_text()


def test_report_on_an_empty_workdir_fails_cleanly(tmp_path: Path):
    proc = cli("report", "--workdir", str(tmp_path / "nothing"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
