"""The HTTP server: OpenAI- and Ollama-compatible routes over a Backend, Prometheus metrics,
API-key auth and graceful shutdown. ``minerva serve`` lives in serve.py."""
