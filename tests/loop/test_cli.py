from pathlib import Path

import pytest
from click.testing import CliRunner
from sealong.loop.cli import cli as cli_group

from ..conftest import REPO, cli


def test_every_command_has_help_with_an_example():
    runner = CliRunner()
    assert cli_group.commands
    for name, command in cli_group.commands.items():
        result = runner.invoke(cli_group, [name, "--help"])
        assert result.exit_code == 0, name
        assert command.help and "Example:" in command.help, f"{name} needs help text with an example"
        assert "sealong-loop" in result.output


@pytest.mark.parametrize("command", ["status", "lineage", "stop"])
def test_commands_on_an_empty_workdir_fail_cleanly(tmp_path: Path, command: str):
    proc = cli(command, "--workdir", str(tmp_path / "nothing"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")


@pytest.mark.parametrize(
    "args",
    [
        ["show", "adapter-r000"],
        ["query", "SELECT 1"],
        ["report"],
        ["export", "champion", "--out", "x"],
        ["export-pairs", "0", "--out", "x.jsonl"],
        ["verify"],
    ],
)
def test_operating_commands_on_an_empty_workdir_fail_cleanly(tmp_path: Path, args: list[str]):
    proc = cli(*args, "--workdir", str(tmp_path / "nothing"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: no sealong database")


def test_missing_config_file(tmp_path: Path):
    proc = cli("start", "--config", str(tmp_path / "nope.toml"), "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 2 and "nope.toml" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_dataset_line_names_file_and_line(tmp_path: Path):
    data = tmp_path / "lb.jsonl"
    data.write_text('{"input": "q", "context": "c", "answers": ["a"]}\n{"input": "q", "context": \n')
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[policy]\nmodel = "tiny-random-llama"\n[data]\neval_source = "longbench"\neval_paths = ["{data}"]\n'
    )
    proc = cli("start", "--config", str(cfg), "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{data}:2: invalid JSON" in proc.stderr


def test_doctor_exit_code_says_whether_a_config_can_run_here(monkeypatch):
    ok = cli("doctor")
    assert ok.returncode == 0 and "ready to run on this machine" in ok.stdout
    monkeypatch.delenv("SEALONG_MODELS", raising=False)
    paper = cli("doctor", "--config", str(REPO / "configs" / "llama31-8b-8xh100.toml"), "--json")
    assert paper.returncode == 1 and "Traceback" not in paper.stderr
    import json

    report = json.loads(paper.stdout)
    missing = {c["need"] for c in report["checks"] if not c["ok"]}
    assert not report["ready"] and any(m.startswith("vllm") for m in missing)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["start", "--max-rounds", "-1"], "Invalid value for '--max-rounds'"),
        (["status", "--interval", "abc"], "Invalid value for '--interval'"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_usage_mistakes_are_one_error_line(args: list[str], needle: str):
    proc = cli(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and needle in proc.stderr
    assert "--help`)" in proc.stderr


def test_version():
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("sealong-loop, version ")


def test_the_bare_command_prints_its_help():
    proc = cli()
    assert proc.stdout.startswith("Usage: sealong-loop") and "Commands:" in proc.stdout
    assert "error:" not in proc.stdout + proc.stderr


def test_worker_refuses_a_single_node_config_and_a_wrong_node_rank(tmp_path: Path):
    from ..conftest import write_config

    one = cli("worker", "--config", str(REPO / "configs" / "tiny-cpu.toml"), "--node-rank", "1")
    assert one.returncode == 2 and one.stdout == "" and one.stderr.count("\n") == 1
    assert "distributed.nnodes is 1; a worker node is only needed when it is 2 or more" in one.stderr
    two = write_config(tmp_path / "two.toml", distributed={"nnodes": 2, "rdzv_endpoint": "127.0.0.1:29400"})
    for rank in ("0", "2"):
        bad = cli("worker", "--config", str(two), "--node-rank", rank, "--scratch", str(tmp_path / "s"))
        assert bad.returncode == 2 and "--node-rank must be 1 … 1 (node 0 is the controller's" in bad.stderr
    assert not (tmp_path / "s").exists()
    doctor = cli("doctor", "--config", str(two))
    assert "note: training spans 2 nodes" in doctor.stdout and "--node-rank K" in doctor.stdout
