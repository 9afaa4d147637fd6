"""The benchmark harness behind `flex-fa4 bench` (see BENCHMARKS.md).

variants  named variants and user mods -> (score_mod, mask_mod) per shape
flops     the FLOP convention and the exact unmasked fraction
timing    CUDA-event / perf_counter medians over rotating input sets
backends  the runner registry (ours) and its hook; peers: the comparison libraries
runner    the sweep: mask build, first call, check against the reference, timing
report    table, JSON, CSV, PNG
cli       flags and defaults
"""
