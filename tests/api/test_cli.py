"""`cellgap serve` and `cellgap bench api` on the command line."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cellgap.cli import build_parser, main
from tests.api.conftest import ONE_THREAD


def test_serve_and_bench_api_are_registered():
    parser = build_parser()
    args = parser.parse_args(["serve", "--run", "r", "--port", "9001", "--threads", "2"])
    assert (args.command, str(args.run), args.port, args.threads, args.host) == ("serve", "r", 9001, 2, "127.0.0.1")
    assert parser.parse_args(["bench", "api", "--run", "r", "--json", "out.json"]).bench == "api"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--port", "70000"])


def test_serve_reports_user_errors_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CELLGAP_RUN_DIR", raising=False)
    assert main(["serve"]) == 2
    assert "no run to serve" in capsys.readouterr().err
    assert main(["serve", "--run", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("cellgap: error:") and "missing" in error and error.count("\n") == 1
    monkeypatch.setenv("CELLGAP_BATCH_SIZE", "0")
    assert main(["serve", "--run", str(tmp_path)]) == 2
    assert "CELLGAP_" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_api_runs_and_writes_json(tiny_run, tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "cellgap.cli", "bench", "api", "--run", str(tiny_run), "--device",
                           "cpu", "--requests", "2", "--clients", "2", "--json", str(out)],
                          env={**os.environ, **ONE_THREAD}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HTTP p50 / in-process p50" in done.stdout
    result = json.loads(out.read_text())
    assert result["clients"] == 2 and result["http_p50_s"] > 0 and result["in_process_batch_tiles_per_s"] > 0
