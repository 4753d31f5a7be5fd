"""Variant artifacts: the on-disk formats, how each reloads in a fresh process without unpickling code, and
safe checkpoint I/O. Both the stages that write variants and the profiler that runs them stand on this."""
