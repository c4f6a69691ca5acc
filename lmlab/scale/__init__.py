"""Scaling out: parallel and distributed inference (torchrun), sweeps on Ray.

Modules, each importing only those above it in the course:
- ``group``: The process group every scheme runs in: rank and world size, a clock for the time spent talking.
- ``pipeline``: Pipeline parallelism: each rank loads only its stage of layers; micro-batches, the bubble, and
  training under two schedules (GPipe, 1F1B) equal to one process.
- ``distributed``: Parallel inference with torch.distributed: data, tensor and pipeline parallel, and what
  communication costs.
- ``sweep``: Sweeps that scale out: a grid of models x methods x settings x batch sizes, one results row per
  setting.
"""

from lmlab.scale.group import Clock, init_process_group, rank_and_world, slowest_rank, timed
from lmlab.scale.pipeline import (
    SCHEDULES, Stage, bubble_predicted, load_stage, peak_activations, pipeline_train_step, run_pipeline_training,
    pipeline_model_ms, schedule_order, stage_corpus, whole_parameter_bytes,
)
from lmlab.scale.distributed import (
    ALLREDUCE_BYTES, PARALLEL_MODELS, SCHEMES, SMOLLM2_WINDOW, RowParallel, allreduce_ms, amdahl_speedup,
    data_parallel_evaluate, fit_allreduce, launch, llama_parameters, main, pipeline_forward,
    ring_allreduce_ms, run_parallel, run_scheme, scaling_model, score_shard, score_windows, scores,
    shard_gpt, shard_llama_mlp, smollm2_windows, stage_bounds, torchrun_command,
)
from lmlab.scale.sweep import (
    DEFAULT_VALUES, ENGINES, LOG_ENV, RESULT_FIELDS, Setting, check_setting, default_values, load_rows, make_grid,
    parse_values, rows_to_results, run_setting, start_ray, sweep_command,
)

__all__ = [
    "SCHEMES", "PARALLEL_MODELS", "SMOLLM2_WINDOW", "ALLREDUCE_BYTES", "Clock", "rank_and_world",
    "init_process_group", "score_shard", "smollm2_windows", "score_windows", "scores", "data_parallel_evaluate",
    "RowParallel", "shard_gpt", "shard_llama_mlp", "stage_bounds", "pipeline_forward", "allreduce_ms",
    "amdahl_speedup", "slowest_rank", "run_scheme", "torchrun_command", "launch", "run_parallel", "fit_allreduce",
    "ring_allreduce_ms", "scaling_model", "llama_parameters", "main", "timed", "ENGINES", "LOG_ENV", "RESULT_FIELDS",
    "DEFAULT_VALUES", "Setting", "default_values", "check_setting", "make_grid", "run_setting", "load_rows",
    "rows_to_results", "start_ray", "parse_values", "sweep_command", "SCHEDULES", "Stage", "load_stage",
    "whole_parameter_bytes", "stage_corpus", "schedule_order", "peak_activations", "bubble_predicted",
    "pipeline_model_ms",
    "pipeline_train_step", "run_pipeline_training",
]
