"""Measuring: the machine and its threads, timing, the results row, statistics, plots, hardware limits.

Modules, each importing only those above it in the course:
- ``runtime``: Threads, devices and seeds: the settings every measurement in lmlab depends on.
- ``timing``: Time a function properly: warm up, repeat, synchronize, report the median and p90.
- ``stats``: Uncertainty: standard errors, bootstrap intervals over documents, and the one rule for "within noise".
- ``results``: One results row for every measurement in the workbook, and one table format for any list of them.
- ``plots``: The trade-off plot: accuracy against milliseconds, with the Pareto frontier.
- ``hardware``: The machine's limits, measured: memory bandwidth, matmul throughput, the decode floor and the
  roofline.
"""

from lmlab.measure.runtime import (
    DEVICE_CHOICES, THREADS_ENV, check_int, check_threads, cpu_model, default_threads, describe_environment,
    device_name, environment, pick_device, seed_everything, synchronize, torch_threads, use_threads,
)
from lmlab.measure.timing import (
    Stopwatch, Timing, background_load, block_means, format_ms, medians_under_load, time_ms,
)
from lmlab.measure.stats import (
    SE_MULTIPLE, Comparison, accuracy_interval, accuracy_noise, binomial_se, check_bootstrap, compare, compare_rows,
    compare_to_best, document_picks, paired_accuracy_interval, paired_nll_interval, perplexity_interval,
    row_timing_verdict, timing_verdict, within_noise,
)
from lmlab.measure.results import (
    Result, add_results, atomic_write_bytes, atomic_write_text, check_results_path, load_results, results_table,
    save_results, with_dense_speed, write_json,
)
from lmlab.measure.plots import (
    FONT_SIZE, PERCEPTION_MS, X_AXES, Y_AXES, budget_plot, finish_axes, log_ticks, pareto_frontier, place_labels,
    plain_log_ticks, tradeoff_pair, tradeoff_plot,
)
from lmlab.measure.hardware import (
    FORMAT_BYTES, FORMATS, GPU_DATA_DIR, GPU_PEAKS, GPU_ROW_KINDS, GPU_ROW_STAMP, GPU_SPECS, QUANT_BLOCKS,
    MATMUL_DTYPES, REGIMES, Bandwidth, Throughput, arithmetic_intensity, decode_floor_ms, gpu_decode_summary,
    gpu_decode_run, gpu_results, gpu_rows, linear_rows_ms, matmul_gflops, memory_bandwidth, predicted_decode_ms,
    regime, roofline_plot, weight_bytes,
)

__all__ = [
    "THREADS_ENV", "DEVICE_CHOICES", "default_threads", "check_int", "check_threads", "use_threads",
    "torch_threads", "pick_device", "synchronize", "seed_everything", "cpu_model", "device_name", "environment",
    "describe_environment", "Timing", "Stopwatch", "format_ms", "time_ms", "background_load", "medians_under_load",
    "block_means",
    "Result", "results_table", "with_dense_speed", "save_results", "check_results_path", "add_results",
    "load_results", "atomic_write_text", "atomic_write_bytes", "write_json", "FONT_SIZE", "pareto_frontier",
    "X_AXES", "Y_AXES",
    "tradeoff_plot", "tradeoff_pair", "plain_log_ticks", "log_ticks", "finish_axes", "place_labels",
    "PERCEPTION_MS", "budget_plot", "FORMATS", "FORMAT_BYTES", "QUANT_BLOCKS", "MATMUL_DTYPES", "GPU_SPECS",
    "GPU_PEAKS", "Bandwidth", "memory_bandwidth", "Throughput", "matmul_gflops", "weight_bytes", "decode_floor_ms",
    "predicted_decode_ms", "arithmetic_intensity", "REGIMES", "regime", "roofline_plot", "GPU_DATA_DIR",
    "GPU_ROW_STAMP", "GPU_ROW_KINDS", "gpu_rows", "gpu_results", "gpu_decode_summary",
    "gpu_decode_run", "linear_rows_ms", "SE_MULTIPLE", "binomial_se",
    "document_picks", "accuracy_interval", "paired_accuracy_interval", "Comparison", "compare", "compare_rows",
    "compare_to_best", "paired_nll_interval", "accuracy_noise", "within_noise", "timing_verdict", "row_timing_verdict",
    "perplexity_interval", "check_bootstrap",
]
