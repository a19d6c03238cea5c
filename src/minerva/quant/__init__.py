"""Weight formats and the methods that run linear layers over them (dense today; GGUF blocks next)."""
