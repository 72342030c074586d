"""--fail-if: the grammar, evaluation on report dicts, and the CLI's exit codes and one-line messages."""

from __future__ import annotations

import json

import pytest

from onnxslim.errors import UsageError
from onnxslim.reporting.failif import MetricUnavailable, evaluate, failure_line, parse_condition, parse_conditions
from tests.reporting.conftest import invoke


def stats(nodes, params, macs, weight_bytes):
    return {"nodes": nodes, "parameters": params, "macs": macs, "constant_bytes": weight_bytes}


def report(before=stats(10, 100, 1000, 400), after=stats(8, 100, 600, 400), verification=None, files=(1000, 900)):
    return {"stats": {"before": before, "after": after}, "input": {"bytes": files[0]}, "output": {"bytes": files[1]},
            "verification": verification, "seconds": {"total": 2.5}}


LOSSY = {"status": "measured", "mode": "lossy", "fidelity": [
    {"name": "a", "cosine": 0.995, "sqnr_db": 30.0, "max_abs": 0.2, "top1_agreement": 0.9},
    {"name": "b", "cosine": 0.98, "sqnr_db": 25.0, "max_abs": 0.1, "top1_agreement": None}]}
EXACT = {"status": "passed", "mode": "exact", "outputs": [{"name": "a", "max_abs": 1e-6}, {"name": "b", "max_abs": 3e-6}], "fidelity": []}


@pytest.mark.parametrize("text, metric, op, threshold", [
    ("nodes-increased", "nodes-increased", "", 0.0),
    ("cosine<0.99", "cosine", "<", 0.99),
    ("macs-reduction<20%", "macs-reduction", "<", 0.2),
    ("macs>1.5G", "macs", ">", 1.5e9),
    ("weight-bytes>=10M", "weight-bytes", ">=", 1e7),
    ("sqnr<=-3e1", "sqnr", "<=", -30.0),
    ("seconds!=.5", "seconds", "!=", 0.5),
])
def test_grammar(text, metric, op, threshold):
    c = parse_condition(text)
    assert (c.metric, c.op) == (metric, op) and c.threshold == pytest.approx(threshold)


@pytest.mark.parametrize("text, message", [
    ("cosin<0.9", "unknown metric 'cosin'"),
    ("cosine<", "expected a flag"),
    ("cosine=0.9", "expected a flag"),
    ("nodes-decreased", "expected a flag"),
    ("cosine<0.9x", "expected a flag"),
])
def test_grammar_errors_name_the_condition(text, message):
    with pytest.raises(UsageError, match=message) as info:
        parse_condition(text)
    assert text in str(info.value) and "\n" not in str(info.value)


def test_repeatable_and_comma_separated_with_spaces():
    conditions = parse_conditions(["nodes-increased, bytes-increased", " cosine < 0.99 ", ""])
    assert [c.text for c in conditions] == ["nodes-increased", "bytes-increased", "cosine<0.99"]


def test_sizes_flags_and_reductions():
    r = report()
    rows = evaluate(parse_conditions(["nodes-increased,params-increased,macs-increased,bytes-increased,weight-bytes-increased"]), r)
    assert [row["holds"] for row in rows] == [False, False, False, False, False]
    rows = evaluate(parse_conditions(["macs-reduction<0.5", "macs-reduction<0.3", "nodes-reduction>=20%", "bytes<1k", "params==100"]), r)
    assert [row["holds"] for row in rows] == [True, False, True, True, True]
    assert rows[0]["value"] == "macs-reduction is 0.4"
    grown = report(after=stats(12, 100, 1000, 500), files=(1000, 1100))
    rows = evaluate(parse_conditions(["nodes-increased", "weight-bytes-increased", "bytes-increased"]), grown)
    assert all(row["holds"] for row in rows) and rows[0]["value"] == "nodes 10 -> 12"
    assert "nodes-increased (nodes 10 -> 12)" in failure_line(rows)


def test_fidelity_metrics_take_the_worst_output():
    r = report(verification=LOSSY)
    rows = evaluate(parse_conditions(["cosine<0.99", "cosine<0.97", "sqnr<26", "top1<0.95", "max-abs>0.15", "seconds>2"]), r)
    assert [row["holds"] for row in rows] == [True, False, True, True, True, True]
    assert rows[0]["value"] == "cosine is 0.98"
    exact = report(verification=EXACT)
    assert evaluate(parse_conditions(["max-abs>2e-6"]), exact)[0]["holds"]


@pytest.mark.parametrize("verification, condition", [(EXACT, "cosine<0.99"), (None, "sqnr<20"), ({"status": "skipped"}, "max-abs>1")])
def test_unmeasured_metric_is_an_error_not_a_pass(verification, condition):
    with pytest.raises(MetricUnavailable):
        evaluate(parse_conditions([condition]), report(verification=verification))


def test_verification_skipped_flag():
    assert evaluate(parse_conditions(["verification-skipped"]), report(verification=None))[0]["holds"]
    assert not evaluate(parse_conditions(["verification-skipped"]), report(verification=EXACT))[0]["holds"]


# --------------------------------------------------------------------------------------------
# through the CLI


def test_cli_condition_that_holds_exits_1_with_one_line(example, tmp_path):
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    result = invoke("optimize", example, "-o", out, "--report", rep, "-q", "--fail-if", "nodes-increased", "--fail-if", "macs-reduction<0.2,nodes>5")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines == ["onnxslim: error: --fail-if: macs-reduction<0.2 (macs-reduction is 0); nodes>5 (nodes is 10) hold"]
    assert out.is_file(), "the optimized model is kept: the gate judges it, it does not break it"
    recorded = json.loads(rep.read_text())["fail_if"]
    assert [(r["condition"], r["holds"]) for r in recorded] == [("nodes-increased", False), ("macs-reduction<0.2", True), ("nodes>5", True)]


def test_cli_conditions_that_do_not_hold_exit_0(example, tmp_path):
    result = invoke("optimize", example, "-o", tmp_path / "o.onnx", "-q", "--fail-if", "nodes-increased,bytes-increased,max-abs>1e-3")
    assert result.exit_code == 0, result.output


def test_cli_bad_condition_is_a_usage_error_before_any_work(example, tmp_path):
    result = invoke("optimize", example, "-o", tmp_path / "o.onnx", "--fail-if", "nodes-grew")
    assert result.exit_code == 2 and "'nodes-grew'" in result.stderr
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("args, message", [
    (["--fail-if", "cosine<0.99"], "--fail-if on cosine: no lossy stage (--quantize, --prune, --svd) was asked for"),
    (["--fail-if", "top1<1", "--passes", "infer_shapes,fold_constants"], "--fail-if on top1: no lossy stage"),
    (["--fail-if", "max-abs>1", "--no-verify"], "--fail-if on max-abs: outputs are not compared under --no-verify"),
    (["--fail-if", "sqnr<30", "--svd", "rank=2", "--no-verify"], "--fail-if on sqnr: outputs are not compared under --no-verify"),
])
def test_cli_unmeasurable_metric_exits_2_before_any_work(example, tmp_path, args, message):
    result = invoke("optimize", example, "-o", tmp_path / "o.onnx", "-q", *args)
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert not (tmp_path / "o.onnx").exists()  # written before the error, once



def test_cli_lossy_cosine_gate(example, tmp_path):
    result = invoke("optimize", example, "-o", tmp_path / "o.onnx", "-q", "--svd", "rank=2", "--svd-min-size", "2", "--fail-if", "cosine<0.9999")
    assert result.exit_code == 1 and "cosine<0.9999 (cosine is" in result.stderr
