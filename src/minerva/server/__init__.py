"""The HTTP server: OpenAI- and Ollama-compatible routes over an AsyncEngine, Prometheus
metrics, API-key auth and graceful shutdown. ``minerva serve`` lives in serve.py."""
