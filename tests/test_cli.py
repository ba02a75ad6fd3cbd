"""The command line as a user meets it: help texts, one-line errors, no half-written run dirs."""

import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def raytag(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "raytag", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=300)


def test_help_lists_every_stage():
    result = raytag("--help")
    assert result.returncode == 0
    for command in ("prepare", "train", "project", "estimate", "affinity", "cluster", "report", "run", "demo"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--set", "training.epochs=0"], "training.epochs = 0"),
        (["--set", "data.format=snap", "--set", "data.edges=/nope/e.txt", "--set", "data.communities=/nope/c.txt"],
         "/nope/e.txt"),
        (["--set", "tasks.regim=seeds"], "unknown field 'tasks.regim'"),
    ],
)
def test_bad_input_one_line_error_and_no_run_dir(tmp_path, args, expected):
    run_dir = tmp_path / "run"
    result = raytag("prepare", "dblp_demo", "--run-dir", str(run_dir), *args)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    assert expected in errors[0]
    assert not run_dir.exists()


def test_malformed_labels_file_names_the_line(tmp_path):
    (tmp_path / "g.adj").write_text("1 2 3\n2 3\n")
    (tmp_path / "labels.txt").write_text("1 a\nnode2 b\n")
    run_dir = tmp_path / "run"
    result = raytag("prepare", "dblp_demo", "--run-dir", str(run_dir), "--set", "data.format=adjlist",
                    "--set", f"data.adjacency={tmp_path / 'g.adj'}", "--set", f"data.labels={tmp_path / 'labels.txt'}")
    assert result.returncode == 2
    assert "labels.txt" in result.stderr and "line 2" in result.stderr
    assert not run_dir.exists()


def test_missing_config_explains(tmp_path):
    result = raytag("train", "--run-dir", str(tmp_path / "empty"))
    assert result.returncode == 2
    assert "no config" in result.stderr
