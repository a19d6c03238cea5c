"""The engine: LLMEngine (sync step loop), LLM (offline API), outputs."""
