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
    assert main(["serve", "--run", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("cellgap: error:") and "missing" in error and error.count("\n") == 1
    monkeypatch.setenv("CELLGAP_BATCH_SIZE", "0")
    assert main(["serve", "--run", str(tmp_path)]) == 2
    assert "CELLGAP_" in capsys.readouterr().err


def test_serve_without_a_run_evaluates_answers_predict_501_and_logs_every_request():
    import httpx

    from cellgap.api.bench import serve_in_subprocess

    env = {k: v for k, v in os.environ.items() if k != "CELLGAP_RUN_DIR"}
    with serve_in_subprocess(None, env=env, stdout=subprocess.PIPE) as (url, process):
        with httpx.Client(base_url=url, timeout=60.0) as client:
            assert client.get("/readyz").json()["model_id"] is None
            assert client.get("/v1/models").status_code == 501
            assert client.get("/nowhere").status_code == 404
            scored = client.post("/v1/evaluate", json={"images": [{"gt": {"instances": [[1]]},
                                                                  "pred": {"instances": [[1]]}}]})
            assert scored.status_code == 200
        process.terminate()
        access, log = process.communicate(timeout=30)
    assert "answers /v1/evaluate only" in log
    assert '"GET /v1/models HTTP/1.1" 501' in access and '"GET /nowhere HTTP/1.1" 404' in access  # 4xx too


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
