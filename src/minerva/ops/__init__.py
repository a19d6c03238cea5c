"""Kernels and their build: Triton GEMV and glue kernels, C kernels and the native build, PDL,
and the kernel set a model is built with (chosen once from the platform and the config)."""
