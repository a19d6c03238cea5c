"""`minerva generate | chat | config`: the command line. Errors a user can cause print one
clear line (no traceback) and exit 1; stdout carries only generated text."""

from __future__ import annotations

import argparse
import sys
import time

from minerva import __version__
from minerva.bench.cli import add_bench_subcommand
from minerva.config import add_config_arguments, load_config_from_args
from minerva.config_command import add_config_subcommand
from minerva.doctor import add_doctor_subcommand
from minerva.errors import MinervaError
from minerva.quantize import add_quantize_subcommand
from minerva.server.config import SERVER_SCHEMA
from minerva.server.serve import add_serve_subcommand
from minerva.tune import add_tune_subcommand


def _add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=128, help="most tokens to generate")
    g.add_argument(
        "--temperature", type=float, default=None, help="0 = greedy (default: the model's)"
    )
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    g.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    g.add_argument(
        "--min-p", type=float, default=None, help="drop tokens below min_p x the top one"
    )
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument(
        "--seed", dest="sampling_seed", type=int, default=None, help="same seed, same text"
    )
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-sequence")


def _sampling_params(backend, args: argparse.Namespace):
    fields = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "stop")
    overrides = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    if args.sampling_seed is not None:
        overrides["seed"] = args.sampling_seed
    return backend.default_sampling_params(
        max_tokens=args.max_tokens, ignore_eos=args.ignore_eos, **overrides
    )


def _open_backend(args: argparse.Namespace):
    """The model behind a BlockingBackend (the CLI is synchronous)."""
    from minerva.backends import load_backend
    from minerva.backends.blocking import BlockingBackend

    config, _ = load_config_from_args(args)
    if config.model.model is None:
        print("minerva: no --model given, using the bundled demo model", file=sys.stderr)
    return BlockingBackend(load_backend("minerva", config, progress=sys.stderr.isatty()))


def _stream_first(runner, prompt, params):
    """The first completion's deltas of one request."""
    for out in runner.stream(prompt, params):
        yield from (c for c in out.outputs if c.index == 0)


def cmd_generate(args: argparse.Namespace) -> int:
    runner = _open_backend(args)
    try:
        params = _sampling_params(runner.backend, args)
        prompt = args.prompt if args.prompt is not None else sys.stdin.read()
        start = time.perf_counter()
        first = None
        n = 0
        reason = None
        for delta in _stream_first(runner, prompt, params):
            if first is None and delta.delta_token_ids:
                first = time.perf_counter()
            n += len(delta.delta_token_ids)
            sys.stdout.write(delta.delta_text)
            sys.stdout.flush()
            reason = delta.finish_reason or reason
        end = time.perf_counter()
        sys.stdout.write("\n")
        _print_speed(n, start, first, end, reason)
    finally:
        runner.close()
    return 0


def _print_speed(n: int, start: float, first: float | None, end: float, reason: str | None) -> None:
    ttft = (first - start) if first else 0.0
    decode = (n - 1) / (end - first) if first and n > 1 and end > first else 0.0
    print(
        f"[{n} tokens, finish={reason}, time to first token {ttft * 1000:.0f} ms, "
        f"{decode:.1f} tokens/s decode]",
        file=sys.stderr,
    )


def cmd_chat(args: argparse.Namespace) -> int:
    runner = _open_backend(args)
    try:
        _chat_loop(runner, _sampling_params(runner.backend, args), args.system)
    finally:
        runner.close()
    return 0


def _chat_loop(runner, params, system: str | None) -> None:
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    print(
        "Chat with the model. Empty line or Ctrl-D to quit, /reset to start over.", file=sys.stderr
    )
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            break
        if not line.strip():
            break
        if line.strip() == "/reset":
            messages = messages[:1] if system else []
            continue
        messages.append({"role": "user", "content": line})
        prompt = runner.backend.apply_chat_template(messages)
        reply, n, start, first, reason = "", 0, time.perf_counter(), None, None
        for delta in _stream_first(runner, prompt, params):
            if first is None and delta.delta_token_ids:
                first = time.perf_counter()
            n += len(delta.delta_token_ids)
            reply += delta.delta_text
            sys.stdout.write(delta.delta_text)
            sys.stdout.flush()
            reason = delta.finish_reason or reason
        sys.stdout.write("\n")
        _print_speed(n, start, first, time.perf_counter(), reason)
        messages.append({"role": "assistant", "content": reply})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minerva", description="Minerva: fast local LLM inference"
    )
    parser.add_argument("--version", action="version", version=f"minerva {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate text from a prompt (streams to stdout)")
    gen.add_argument("prompt", nargs="?", default=None, help="the prompt (default: read stdin)")
    add_config_arguments(gen, exclude=("seed",))
    _add_sampling_arguments(gen)
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser("chat", help="interactive chat using the model's chat template")
    chat.add_argument("--system", default=None, help="system prompt")
    add_config_arguments(chat, exclude=("seed",))
    _add_sampling_arguments(chat)
    chat.set_defaults(func=cmd_chat)

    add_config_subcommand(sub, extra_schemas=(SERVER_SCHEMA,))
    add_serve_subcommand(sub)
    add_bench_subcommand(sub)
    add_doctor_subcommand(sub)
    add_quantize_subcommand(sub)
    add_tune_subcommand(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MinervaError as e:
        print(f"minerva: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
