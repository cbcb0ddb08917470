"""`tfkit data processes` and `tfkit data optimal-loss`."""

from __future__ import annotations

import json
import math

from typer.testing import CliRunner

from tfkit.cli.app import app

runner = CliRunner()


def test_optimal_loss_rrxor_json_is_exact():
    result = runner.invoke(app, ["data", "optimal-loss", "rrxor", "--seq-len", "6", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["process"] == "rrxor"
    assert data["params"] == {"pR1": 0.5, "pR2": 0.5}
    assert abs(data["entropy_rate"] - math.log(2) * 2 / 3) < 1e-12
    losses = data["optimal_loss"]
    assert len(losses) == 6
    # no information before the first pair of bits; the third token is the XOR of a random pair
    assert abs(losses[0] - math.log(2)) < 1e-12
    assert abs(losses[1] - math.log(2)) < 1e-12
    assert abs(losses[2] - (math.log(3) - 2 / 3 * math.log(2))) < 1e-12
    assert all(a >= b - 1e-12 for a, b in zip(losses, losses[1:]))
    assert losses[-1] > data["entropy_rate"]


def test_optimal_loss_with_params_and_table():
    result = runner.invoke(app, ["data", "optimal-loss", "mess3", "--seq-len", "4", "--param", "x=0.05", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["params"]["x"] == 0.05
    assert abs(data["optimal_loss"][0] - math.log(3)) < 1e-12
    table = runner.invoke(app, ["data", "optimal-loss", "golden-mean", "--seq-len", "3"])
    assert table.exit_code == 0 and "entropy rate (exact)" in table.output


def test_processes_lists_all_with_entropy_rates():
    result = runner.invoke(app, ["data", "processes", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["process"]: r for r in json.loads(result.output)}
    assert set(rows) >= {"mess3", "rrxor", "zero-one-random", "golden-mean", "even"}
    assert abs(rows["rrxor"]["entropy_rate_bits"] - 2 / 3) < 1e-12
    assert rows["mess3"]["entropy_rate"] < math.log(3)
    assert rows["mess3"]["params"] == {"x": 0.15, "alpha": 0.6}


def test_errors_exit_2():
    for args, message in [
        (["data", "optimal-loss", "nosuch"], "unknown process 'nosuch'"),
        (["data", "optimal-loss", "mess3", "--param", "x=abc"], "--param expects name=number"),
        (["data", "optimal-loss", "mess3", "--param", "y=1"], "y"),
        (["data", "optimal-loss", "mess3", "--seq-len", "0"], "--seq-len must be at least 1"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output
        assert "Traceback" not in result.output
