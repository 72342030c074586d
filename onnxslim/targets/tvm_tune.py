"""Meta-schedule tuning for TVM on x86, with a tuning database that later builds reuse.

Untuned TVM on CPU runs one generic schedule per operator and is tens of times slower than
onnxruntime. ``--tvm-tune-trials N`` measures N candidate schedules on this machine, spent on the
N/16 tasks with the most FLOPs (a small budget spread over every reshape and mean would tune
nothing that matters), and records them in a JSON database
(``--tvm-tuning-db PATH``, default ``<emit dir>/tuning_db``); a later build with the same
database and 0 trials applies the recorded schedules without measuring again, and more trials
continue from them. Tasks that got no trials keep the default schedule.

Two things keep tuning practical on a small machine: the builder's worker runs a build function
of ours that does not import TVM's tensor-intrinsic registry (about a minute per fresh worker;
only int8/tensor-core schedules need it, and fp32 CPU schedules never do), and the evolutionary
search uses a small population. The XGBoost cost model is used when xgboost is installed, else
a random one (measurements still decide).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TRIALS_PER_ITER = 16
POPULATION = 128


def build_without_intrinsics(mod, target, _params):
    """meta-schedule's default build minus the tensor-intrinsic import (runs in builder workers)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def heaviest_tasks(mod, target, count: int) -> list:
    """The ``count`` tuning tasks with the most FLOPs (times how often the model calls them)."""
    from tvm.s_tir.analysis import estimate_tir_flops
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    def cost(task) -> float:
        try:
            return estimate_tir_flops(task.dispatched[0]) * task.weight
        except Exception:  # an op the estimator does not know: rank it last
            return 0.0

    return sorted(extract_tasks(mod, target), key=cost, reverse=True)[:count]


def records(db: Path) -> int:
    path = db / "database_tuning_record.json"
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0


def best_latencies_us(db: Path) -> list[float]:
    """The best measured latency of each tuned workload (microseconds), for the report."""
    best: dict[int, float] = {}
    path = db / "database_tuning_record.json"
    if not path.is_file():
        return []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        workload, record = json.loads(line)
        costs = record[1] if len(record) > 1 else None
        if costs and costs[0] < 1e9:
            value = sum(costs) / len(costs) * 1e6
            best[workload] = min(best.get(workload, value), value)
    return sorted(best.values())


def tune(mod, target, db: Path, trials: int) -> tuple[Any, dict[str, Any]]:
    """Tune ``mod`` for ``trials`` measurements (0: apply ``db`` only); returns (module, info)."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    db.mkdir(parents=True, exist_ok=True)
    before = records(db)
    with target:
        mod = tvm.transform.Sequential([
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.pipeline.zero_pipeline(),
        ])(mod)
    selected: list[str] = []
    if trials > 0:
        cost_model = "xgb" if importlib.util.find_spec("xgboost") else "random"
        tasks = heaviest_tasks(mod, target, max(1, trials // TRIALS_PER_ITER))
        selected = [t.task_name for t in tasks]
        logger.warning("tuning with meta-schedule: %d trial(s) over the %d heaviest task(s), %s cost model, database %s "
                       "(this takes minutes)", trials, len(tasks), cost_model, db)
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            extracted_tasks=tasks, work_dir=str(db), seed=0,
            strategy=ms.search_strategy.EvolutionarySearch(population_size=POPULATION, genetic_num_iters=2))
        ms.tune.tune_tasks(
            tasks=contexts, task_weights=weights, work_dir=str(db), max_trials_global=trials,
            num_trials_per_iter=min(TRIALS_PER_ITER, trials),
            builder=ms.builder.LocalBuilder(f_build=build_without_intrinsics, timeout_sec=600),
            runner=ms.runner.LocalRunner(timeout_sec=120, evaluator_config=ms.runner.EvaluatorConfig(
                number=3, repeat=1, min_repeat_ms=20, enable_cpu_cache_flush=False)),
            cost_model=cost_model,
        )
    with target:
        mod = relax.transform.MetaScheduleApplyDatabase(str(db))(mod)
    info = {"trials": trials, "tasks": selected, "records_before": before, "records": records(db), "database": str(db)}
    return mod, info
