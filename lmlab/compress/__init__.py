"""Compression: quantization, pruning and low rank, ONNX export and real int8, the methods table.

Modules, each importing only those above it in the course:
- ``export``: Exported graphs: a model exported to ONNX and run by ONNX Runtime, in float32 or with real int8
  arithmetic.
- ``fused``: Fused decoder graphs: SmolLM2 built node by node from its weights with ONNX Runtime's fused operators,
  its KV cache one buffer allocated once, in float32, int8 or int4.
- ``prune``: Compression by removal: pruning, low-rank factors and weight sharing, and which of them buy
  milliseconds.
- ``quantize``: Quantization: q(x) = round(x / Q) · Q, from the formula to int8 that really runs.
- ``methods``: Every compression technique of chapters 04 and 05 as a function of one setting, with that setting's
  range.
- ``experiment``: One experiment, one results row: a shipped model, compressed by a named method at a setting,
  scored and timed.
- ``quantize_study``: Chapter 04's measurements, tables and plots, built on ``lmlab.compress.quantize``: what
  rounding costs, model by model.
"""

from lmlab.compress.export import (
    BLOCK_SIZE, DECODER_VERSION, FORMAT_VERSION, OPTIMIZATIONS, QUANTIZATIONS, OnnxDecoder, OnnxLogits, OnnxPast,
    conv1d_as_linear, graph_node_counts, graph_op_counts, nodes_removed, onnx_matmul, onnx_decoder, onnx_model,
    profile_step,
)
from lmlab.compress.fused import (
    FUSED_FORMATS, FUSED_VERSION, SUPPORTED_ARCHITECTURES, FusedDecoder, FusedPast, fused_decoder,
)
from lmlab.compress.prune import (
    MAX_SHARING_BITS, SCOPES, Compressed, LowRankLinear, beaten_by, check_sparsity, kmeans_1d, low_rank,
    magnitude_prune, measure_variants, mlp_blocks, prunable_layers, prune_heads, prune_mlp, removal_plot,
    share_weights, sweep_methods, sweep_takeaways, time_variants,
)
from lmlab.compress.quantize import (
    GRANULARITIES, SCALE_BYTES, ZERO_POINT_BYTES, Grid, check_bits, choose_grid, fake_quantize, model_bytes,
    quantize_model, stored_bits_per_weight,
)
from lmlab.compress.methods import CPU_ONLY_METHODS, METHODS, Method
from lmlab.compress.experiment import MEASURED_KINDS, run
from lmlab.compress.quantize_study import (
    UNITS, Subject, bits_plot, bits_sweep, bits_takeaway, frontier_takeaway, granularity_errors, input_ranges,
    label_points, llm_subject, lm_subject, model_rows, multiply_adds, outlier_plot, rounding_error_plot,
    row_range_plot, rows_text, runtime_rows, simulated_rows, speed_takeaway, sweep_table, tradeoff_figure,
)

__all__ = [
    "QUANTIZATIONS", "BLOCK_SIZE", "FORMAT_VERSION", "DECODER_VERSION", "OPTIMIZATIONS", "OnnxLogits", "onnx_model",
    "conv1d_as_linear", "OnnxPast", "OnnxDecoder", "onnx_decoder", "graph_node_counts", "graph_op_counts",
    "nodes_removed",
    "profile_step", "onnx_matmul", "FUSED_FORMATS", "FUSED_VERSION", "SUPPORTED_ARCHITECTURES", "FusedPast",
    "FusedDecoder", "fused_decoder", "SCOPES", "MAX_SHARING_BITS", "Compressed", "check_sparsity", "prunable_layers",
    "magnitude_prune", "mlp_blocks", "prune_mlp", "prune_heads", "LowRankLinear", "low_rank", "kmeans_1d",
    "share_weights", "sweep_methods", "sweep_takeaways", "removal_plot", "time_variants", "measure_variants",
    "beaten_by", "GRANULARITIES", "SCALE_BYTES", "ZERO_POINT_BYTES", "check_bits", "Grid", "choose_grid",
    "fake_quantize", "quantize_model", "model_bytes", "stored_bits_per_weight", "Method", "METHODS", "CPU_ONLY_METHODS",
    "MEASURED_KINDS",
    "run", "UNITS", "rounding_error_plot", "row_range_plot", "granularity_errors", "Subject", "lm_subject",
    "llm_subject", "bits_sweep", "sweep_table", "bits_plot", "bits_takeaway", "input_ranges", "outlier_plot",
    "runtime_rows", "rows_text", "speed_takeaway", "simulated_rows", "model_rows", "frontier_takeaway",
    "tradeoff_figure", "label_points", "multiply_adds",
]
