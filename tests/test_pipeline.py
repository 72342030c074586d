"""Pipeline strings, the registry and the pass manager (fixed points, records, failures)."""

import pytest
import onnx_graphsurgeon as gs

from onnxslim import pipeline as pl
from onnxslim.errors import PassFailedError, StrictModeError, UnknownPassError, UsageError
from onnxslim.pipeline import FixedPoint, PassContext, PassResult, PassStep, Pipeline, parse_pipeline


def test_registry_has_every_cleanup_pass_with_a_description():
    passes = pl.registry()
    for name in pl.CLEANUP_PASSES + ("infer_shapes",):
        assert name in passes, name
        assert passes[name].description(), f"{name} has no one-line description"
        assert passes[name].lossy is False


def test_parse_round_trips_default_pipeline():
    steps = parse_pipeline(pl.DEFAULT_PIPELINE)
    assert steps[0] == PassStep("infer_shapes")
    assert isinstance(steps[1], FixedPoint) and steps[1].cap == 10
    assert pl.format_pipeline(steps) == pl.DEFAULT_PIPELINE.replace("]*10", "]")
    assert parse_pipeline(pl.format_pipeline(steps)) == steps


def test_parse_cap_and_whitespace():
    steps = parse_pipeline(" dedupe , [ eliminate_dead , dedupe ]*3 ")
    assert steps == (PassStep("dedupe"), FixedPoint((PassStep("eliminate_dead"), PassStep("dedupe")), 3))
    assert str(Pipeline(steps)) == "dedupe,[eliminate_dead,dedupe]*3"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty pipeline"),
        ("dedupe,,eliminate_dead", "empty step"),
        ("dedupe,", "trailing"),
        ("[dedupe", "unclosed"),
        ("dedupe]", "misplaced"),
        ("[[dedupe]]", "nested"),
        ("[dedupe]*0", "cap"),
        ("dedupe eliminate_dead", "missing ','"),
        ("dedupe;rm -rf", "unexpected"),
    ],
)
def test_parse_errors_are_usage_errors(text, message):
    with pytest.raises(UsageError, match=message):
        parse_pipeline(text)


def test_unknown_pass_suggests_close_names():
    with pytest.raises(UnknownPassError, match="did you mean fold_constants"):
        parse_pipeline("fold_const")


def test_without_passes_drops_empty_groups():
    steps = parse_pipeline("infer_shapes,[dedupe]*2,eliminate_dead")
    assert pl.format_pipeline(pl.without_passes(steps, {"dedupe"})) == "infer_shapes,eliminate_dead"
    with pytest.raises(UnknownPassError):
        pl.without_passes(steps, {"nope"})


class _CountDown(pl.Pass):
    """Reports a change the first N times it runs (test double)."""

    name = "count_down"

    def __init__(self):
        self.left = 3

    def run(self, graph, ctx):
        self.left -= 1
        return PassResult(self.left >= 0, {"left": self.left})


class _Boom(pl.Pass):
    """Raises (test double)."""

    name = "boom"

    def run(self, graph, ctx):
        raise KeyError("x")


@pytest.fixture
def fake_registry(monkeypatch):
    monkeypatch.setattr(pl, "registry", lambda: {"count_down": _CountDown, "boom": _Boom})


def _graph():
    x = gs.Variable("x", dtype="float32", shape=[1])
    y = gs.Variable("y", dtype="float32", shape=[1])
    return gs.Graph(nodes=[gs.Node("Relu", inputs=[x], outputs=[y])], inputs=[x], outputs=[y])


def test_fixed_point_repeats_until_no_change(fake_registry):
    records = Pipeline("[count_down]*10").run(_graph(), PassContext())
    assert [r.changed for r in records] == [True, True, True, False]
    assert [r.round for r in records] == [1, 2, 3, 4]


def test_fixed_point_respects_cap(fake_registry):
    records = Pipeline("[count_down]*2").run(_graph(), PassContext())
    assert len(records) == 2


def test_after_pass_hook_sees_changed_passes_only(fake_registry):
    seen = []
    Pipeline("[count_down]").run(_graph(), PassContext(), lambda rec, g: seen.append(rec.round))
    assert seen == [1, 2, 3]


def test_pass_exception_becomes_pass_failed_error_naming_the_pass(fake_registry):
    with pytest.raises(PassFailedError, match=r"pass 'boom' failed: KeyError.*--skip boom"):
        Pipeline("boom").run(_graph(), PassContext())


def test_decline_records_reason_and_strict_raises():
    ctx = PassContext()
    ctx.decline("p", "node1", "weights are not constant")
    assert ctx.notes == [{"pass": "p", "where": "node1", "reason": "weights are not constant"}]
    with pytest.raises(StrictModeError, match="node1"):
        PassContext(strict=True).decline("p", "node1", "why")
