"""`minerva generate | chat | config`: the command line. Errors a user can cause print one
clear line (no traceback) and exit 1; stdout carries only generated text."""

from __future__ import annotations

import argparse
import random
import sys
import time

from minerva import __version__
from minerva.bench.cli import add_bench_subcommand
from minerva.chat import ChatSession, ReplyStats, enable_line_editing
from minerva.config import add_config_arguments, load_config_from_args
from minerva.config_command import add_config_subcommand
from minerva.errors import ConfigError, MinervaError
from minerva.quantize import add_quantize_subcommand
from minerva.server.config import SERVER_SCHEMA
from minerva.server.serve import add_serve_subcommand
from minerva.tune import add_tune_subcommand

SAMPLING_FLAGS = {
    "max_tokens": "--max-tokens",
    "temperature": "--temperature",
    "top_p": "--top-p",
    "top_k": "--top-k",
    "min_p": "--min-p",
    "repetition_penalty": "--repetition-penalty",
    "seed": "--seed",
    "stop": "--stop",
}


def _add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument(
        "--max-tokens", type=int, default=128, help="Most tokens to generate. Default: 128."
    )
    g.add_argument(
        "--temperature", type=float, default=None,
        help="0 = greedy. Default: the model's (generation_config.json), else 1.",
    )  # fmt: skip
    g.add_argument(
        "--top-p", type=float, default=None,
        help="Nucleus sampling mass in (0, 1]. Default: the model's, else 1 (off).",
    )  # fmt: skip
    g.add_argument(
        "--top-k", type=int, default=None,
        help="Sample among the k most likely tokens. Default: the model's, else 0 (off).",
    )  # fmt: skip
    g.add_argument(
        "--min-p", type=float, default=None,
        help="Drop tokens below min_p x the top one's probability. Default: the model's, else 0.",
    )  # fmt: skip
    g.add_argument(
        "--repetition-penalty", type=float, default=None,
        help=">1 discourages repeats. Default: the model's, else 1 (off).",
    )  # fmt: skip
    g.add_argument(
        "--seed", dest="sampling_seed", type=int, default=None,
        help="Same seed, same text. Default: a fresh random seed each run.",
    )  # fmt: skip
    g.add_argument(
        "--stop", action="append", default=None, help="Stop string (repeatable). Default: none."
    )
    g.add_argument(
        "--ignore-eos", action="store_true", help="Keep going past end-of-sequence. Default: off."
    )
    p.add_argument(
        "--verbose", "-v", action="store_true",
        help="Print the seed and a stats line (tokens, time to first token, speed). Default: off.",
    )  # fmt: skip


def _sampling_overrides(args: argparse.Namespace) -> dict:
    """The sampling flags given, by SamplingParams field."""
    fields = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "stop")
    overrides = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    if args.sampling_seed is not None:
        overrides["seed"] = args.sampling_seed
    return {"max_tokens": args.max_tokens, "ignore_eos": args.ignore_eos, **overrides}


def check_sampling_flags(args: argparse.Namespace) -> None:
    """Refuse bad sampling flags before the model loads (ConfigError naming the flag)."""
    from minerva.sampling_params import SamplingParams  # noqa: PLC0415 - no torch

    try:
        SamplingParams(**_sampling_overrides(args))
    except ValueError as e:
        field = str(e).split(" ", 1)[0]
        flag = SAMPLING_FLAGS.get(field, field)
        raise ConfigError(f"{flag}: {str(e).removeprefix(field).strip()}") from None


def _sampling_params(backend, args: argparse.Namespace):
    """The model's defaults under the flags given; a fresh seed unless --seed is set."""
    overrides = _sampling_overrides(args)
    overrides.setdefault("seed", random.SystemRandom().randrange(2**31))
    return backend.default_sampling_params(**overrides)


def _open_backend(args: argparse.Namespace):
    """The model behind a BlockingBackend (the CLI is synchronous)."""
    from minerva.backends import load_backend  # noqa: PLC0415 - torch: not for --help
    from minerva.backends.blocking import BlockingBackend  # noqa: PLC0415

    config, _ = load_config_from_args(args)
    if config.model.model is None:
        print("minerva: no --model given, using the bundled demo model", file=sys.stderr)
    backend = load_backend(config.model.backend, config, progress=sys.stderr.isatty())
    return BlockingBackend(backend)


def _stream_first(runner, prompt, params):
    """The first completion's deltas of one request."""
    for out in runner.stream(prompt, params):
        yield from (c for c in out.outputs if c.index == 0)


def cmd_generate(args: argparse.Namespace) -> int:
    check_sampling_flags(args)
    runner = _open_backend(args)
    try:
        params = _sampling_params(runner.backend, args)
        if args.verbose:
            print(f"[seed {params.seed}]", file=sys.stderr)
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
        print(ReplyStats(n, start, first, end, reason).line(), file=sys.stderr)
    finally:
        runner.close()
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    check_sampling_flags(args)
    runner = _open_backend(args)
    save_history = enable_line_editing()
    try:

        def make_params():
            params = _sampling_params(runner.backend, args)
            if args.verbose:
                print(f"[seed {params.seed}]", file=sys.stderr)
            return params

        ChatSession(runner, make_params, args.system, args.verbose).run()
    finally:
        save_history()
        runner.close()
    return 0


def _add_doctor_subcommand(subparsers) -> None:
    """``minerva doctor``; doctor.py (torch) is imported only when it runs."""
    parser = subparsers.add_parser(
        "doctor",
        help="what this machine can do for Minerva, and what to set",
        description="Report the software, the devices (features, memory, measured bandwidth) "
        "and what a model costs here (default: the bundled demo model), then advice.",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--json", action="store_true", help="Print the report as JSON. Default: off."
    )
    parser.add_argument(
        "--no-model", action="store_true", help="Skip the model estimate. Default: off."
    )

    def run(args: argparse.Namespace) -> int:
        from minerva.doctor import run_doctor  # noqa: PLC0415

        return run_doctor(args)

    parser.set_defaults(func=run)


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
    chat.add_argument("--system", default=None, help="System prompt. Default: none.")
    add_config_arguments(chat, exclude=("seed",))
    _add_sampling_arguments(chat)
    chat.set_defaults(func=cmd_chat)

    add_config_subcommand(sub, extra_schemas=(SERVER_SCHEMA,))
    add_serve_subcommand(sub)
    add_bench_subcommand(sub)
    _add_doctor_subcommand(sub)
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
