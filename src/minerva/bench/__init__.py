"""`minerva bench`: serving load over HTTP (any OpenAI / Ollama endpoint), offline latency and
throughput per backend, consistency and perplexity checks, and their reports.

Module map: workloads (what is asked), http_client + protocols (one streamed request, timed per
chunk), load (concurrency sweeps, Poisson arrivals, interleaved targets), metrics (TTFT, TPOT,
ITL, E2E, goodput), monitor (server memory / CPU / GPU), offline + drivers/ (in-process
engines: every Backend, and transformers), consistency, perplexity, report + plots (JSON, CSV, Markdown, PNG), cli.
"""
