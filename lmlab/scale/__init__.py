"""Scaling out: parallel and distributed training and inference (torchrun), sweeps on Ray.

Modules, each importing only those above it in the course:
- ``group``: The process group every scheme runs in: rank and world size, a clock for the time spent talking.
- ``pipeline``: Pipeline parallelism: each rank loads only its stage of layers; micro-batches, the bubble, and
  training under two schedules (GPipe, 1F1B) equal to one process.
- ``scaling``: A model of scaling out, from measured parameters and the config: each scheme on N ranks up to its
  cap (contention, imbalance, all-reduce and send costs, the bubble), checked against its own measured points.
- ``training``: Distributed training: DDP, ZeRO (sharded optimizer state) and FSDP2 against one process on the
  same batches, with bytes per rank against the ZeRO formulas.
- ``sharding``: Weights that are really sharded: each tensor-parallel rank reads only its slice of the
  safetensors file; vocabulary-parallel embedding, output layer and cross-entropy; a memory budget.
- ``distributed``: The launcher and the inference schemes: data, tensor and pipeline parallel under torchrun, one
  row each, and what communication costs.
- ``sweep``: Sweeps that scale out: a grid of models x methods x settings x batch sizes, one results row per
  setting, on local processes or Ray actors.
"""

from lmlab.scale.group import (
    Clock, init_process_group, rank_and_world, slowest_rank, timed,
)
from lmlab.scale.pipeline import (
    SCHEDULES, Stage, bubble_predicted, load_stage, peak_activations, pipeline_forward, pipeline_train_step,
    run_pipeline_training, schedule_order, stage_bounds, stage_corpus, whole_parameter_bytes,
)
from lmlab.scale.scaling import (
    BACKWARD_SHARE, MESSAGE_BYTES, SCORE_BYTES, STORED_ROWS, allreduce_ms, amdahl_speedup, batch_work, check_model,
    contention, fit_allreduce, fit_latency, fit_residuals, macs_per_token, model_curve, rank_shares,
    ring_allreduce_ms, scaling_model, scaling_parameters, scheme_cap, sendrecv_ms, stored_parameters,
    tensor_parallel_devices,
)
from lmlab.scale.training import (
    MODES, STAGE_OF, TRAINING_MODELS, allreduce_alone_ms, bucket_elements, check_training, exposed_communication_ms,
    formula_bytes, global_batches, held_bytes, nll_sum, shard_bound_bytes, share, train_parallel, training_model,
)
from lmlab.scale.sharding import (
    RowParallel, ShardedBlock, SliceReader, TensorInfo, VocabParallelGPT, check_budget_mb, check_memory_budget,
    gpt_corpus, load_tensor_parallel_gpt, peak_rss, planned_bytes, read_header, slice_plan, split_range,
    vocab_parallel_nll,
)
from lmlab.scale.distributed import (
    PARALLEL_MODELS, SCHEMES, SMOLLM2_WINDOW, data_parallel_evaluate, launch, llama_parameters, main, run_parallel,
    run_scheme, score_shard, score_windows, scores, shard_gpt, shard_llama_mlp, smollm2_windows, torchrun_command,
)
from lmlab.scale.sweep import (
    ENGINES, LOG_ENV, RESULT_FIELDS, CachingWorker, Setting, check_setting, default_values, load_rows, make_grid,
    parse_values, rows_to_results, run_setting, start_ray, sweep_command,
)

__all__ = [
    "Clock", "init_process_group", "rank_and_world", "slowest_rank", "timed", "SCHEDULES", "Stage",
    "bubble_predicted", "load_stage", "peak_activations", "pipeline_forward", "pipeline_train_step",
    "run_pipeline_training", "schedule_order", "stage_bounds", "stage_corpus", "whole_parameter_bytes",
    "BACKWARD_SHARE", "MESSAGE_BYTES", "SCORE_BYTES", "STORED_ROWS", "allreduce_ms", "amdahl_speedup", "batch_work",
    "check_model", "contention", "fit_allreduce", "fit_latency", "fit_residuals", "macs_per_token", "model_curve",
    "rank_shares", "ring_allreduce_ms", "scaling_model", "scaling_parameters", "scheme_cap", "sendrecv_ms",
    "stored_parameters", "tensor_parallel_devices", "MODES", "STAGE_OF", "TRAINING_MODELS", "allreduce_alone_ms",
    "bucket_elements", "check_training", "exposed_communication_ms", "formula_bytes", "global_batches",
    "held_bytes", "nll_sum", "shard_bound_bytes", "share", "train_parallel", "training_model", "RowParallel",
    "ShardedBlock", "SliceReader", "TensorInfo", "VocabParallelGPT", "check_budget_mb", "check_memory_budget",
    "gpt_corpus", "load_tensor_parallel_gpt", "peak_rss", "planned_bytes", "read_header", "slice_plan",
    "split_range", "vocab_parallel_nll", "PARALLEL_MODELS", "SCHEMES", "SMOLLM2_WINDOW", "data_parallel_evaluate",
    "launch", "llama_parameters", "main", "run_parallel", "run_scheme", "score_shard", "score_windows", "scores",
    "shard_gpt", "shard_llama_mlp", "smollm2_windows", "torchrun_command", "ENGINES", "LOG_ENV", "RESULT_FIELDS",
    "CachingWorker", "Setting", "check_setting", "default_values", "load_rows", "make_grid", "parse_values",
    "rows_to_results", "run_setting", "start_ray", "sweep_command",
]
