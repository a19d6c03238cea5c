"""Low-level compute kernels (C, built at first use) shared by the layers above."""
