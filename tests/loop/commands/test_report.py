"""`sealong-loop report`: PNG plots that open, and a Markdown summary that links every one of them."""

from __future__ import annotations

import re
import time
from pathlib import Path

import matplotlib.image
import pytest
from PIL import Image
from sealong.loop.commands.report import PLOTS, collect, wilson, write_report
from sealong.store.db import connect, rows

from ...conftest import cli
from .test_status import tiny_ops_run


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
    summary = md.split("\n## ")[0]
    table = [line for line in summary.splitlines() if re.match(r"\| \d+ \|", line)]
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


def test_report_tables_match_the_database(run_dir: Path, tmp_path: Path):
    write_report(connect(run_dir, readonly=True), tmp_path)
    md = (tmp_path / "report.md").read_text()
    db = connect(run_dir, readonly=True)
    sections = {block.split("\n", 1)[0]: block for block in md.split("\n## ")[1:]}
    signal = next(v for k, v in sections.items() if k.startswith("Self-supervision signal"))
    for d in rows(
        db,
        "SELECT r.idx, d.value FROM diagnostics d JOIN rounds r ON r.id = d.round_id "
        "WHERE d.metric = 'oracle'",
    ):
        row = next(line for line in signal.splitlines() if line.startswith(f"| {d['idx']} |"))
        assert row.split(" | ")[4] == f"{d['value']:.1f}"  # round, greedy, random, mean, oracle@N
    evals = next(v for k, v in sections.items() if k.startswith("Held-out eval"))
    for e in rows(db, "SELECT model_key, task, n, subem FROM eval_summary"):
        row = next(line for line in evals.splitlines() if line.startswith(f"| {e['model_key']} |"))
        assert f"{e['subem']:.1f} [" in row and f"(n={e['n']})" in row
    gate = next(v for k, v in sections.items() if k.startswith("Promotion gate"))
    assert "| 0 | adapter-r000 | base | margin |" in gate and "| 1 | adapter-r001 | adapter-r000 |" in gate
    times = next(v for k, v in sections.items() if k.startswith("Wall time per stage"))
    assert len([line for line in times.splitlines() if re.match(r"\| \d+ \|", line)]) == 2


def test_wilson_interval():
    lo, hi = wilson(5, 10)
    assert abs(lo - 23.7) < 0.1 and abs(hi - 76.3) < 0.1
    assert wilson(0, 16)[0] == 0.0 and 0 < wilson(0, 16)[1] < 25
    assert wilson(16, 16)[1] == 100.0
