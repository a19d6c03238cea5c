"""Train Minerva's bundled demo model: a ~6 M parameter Llama with its own byte-level BPE.

Three stages, each seeded and deterministic (GPU training up to the non-deterministic order
of floating-point reductions in CUDA kernels):

    # 1. CPU: corpus (scripts/build_demo_corpus.py), tokenizer, token ids
    python scripts/build_demo_corpus.py --out build/demo_data
    python scripts/train_demo_model.py prepare --corpus build/demo_data --data build/demo_train
    # 2. GPU (or CPU, slowly): train, save a Hugging Face folder, loss curve, held-out perplexity
    python scripts/train_demo_model.py train --data build/demo_train --out OUT --compile
    # 3. CPU: sample with Minerva itself, measure perplexity, write the model card
    python scripts/train_demo_model.py card --model src/minerva/demo_model --log OUT/train_log.json

Held-out perplexity (the figure in the model card and tests/unit/test_demo_model.py) is defined
here once: encode heldout.txt without special tokens, cut the ids into chunks of
``max_position_embeddings - 1``, put BOS in front of each chunk, and average the negative
log-likelihood of every chunk token; perplexity = exp(mean NLL).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

SEED = 1234
VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
CONTEXT = 512
# Renders "<s><|user|>\n{content}</s>\n<|assistant|>\n": the format of the corpus' chat examples.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Only the system, user and assistant roles are supported') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
MODEL_SHAPE = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
)
# The speculative-decoding target whose draft is the demo model (issue 17): same family,
# tokenizer and context. Depth and width both x1.5 (a 7B target over a TinyLlama draft is
# x1.45 deep, x2 wide), SwiGLU at 8/3 x hidden: 3.5x the demo's parameters, ~41 MB in bf16.
TARGET_SHAPE = dict(
    hidden_size=384,
    intermediate_size=1024,
    num_hidden_layers=12,
    num_attention_heads=6,
    num_key_value_heads=2,
    head_dim=64,
)
SHAPES = {"demo": MODEL_SHAPE, "target": TARGET_SHAPE}
# Shards of at most 15 MiB: the GPU machine sends back files of at most 16 MiB.
MAX_SHARD_BYTES = 15 * 2**20
GENERATION_DEFAULTS = dict(
    do_sample=True, temperature=0.7, top_k=40, top_p=0.95, repetition_penalty=1.1
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


# --- stage 1: tokenizer and token ids -------------------------------------------------------


def read_corpus(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def train_tokenizer(texts: list[str]):
    """Byte-level BPE: every byte is in the base alphabet, so any text round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    bos_id = tok.token_to_id(BOS)
    # Llama-style: BOS in front of every encoded text; EOS is the model's to write.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tok


def tokenizer_config() -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "extra_special_tokens": SPECIAL_TOKENS[3:],
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": CONTEXT,
        "chat_template": CHAT_TEMPLATE,
    }


def encode_rows(tok, rows: list[dict]) -> np.ndarray:
    """Documents get BOS ... EOS; chat examples already hold their special tokens as text."""
    eos = tok.token_to_id(EOS)
    docs = [r["text"] for r in rows if r["kind"] == "doc"]
    chats = [r["text"] for r in rows if r["kind"] == "chat"]
    doc_ids = tok.encode_batch(docs, add_special_tokens=True)
    chat_ids = tok.encode_batch(chats, add_special_tokens=False)
    by_kind = {"doc": iter(doc_ids), "chat": iter(chat_ids)}
    out: list[int] = []
    for r in rows:  # keep corpus order
        ids = next(by_kind[r["kind"]]).ids
        out.extend(ids + [eos] if r["kind"] == "doc" else ids)
    return np.asarray(out, dtype=np.uint16)


def cmd_prepare(args: argparse.Namespace) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    corpus, data = Path(args.corpus), Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    train_rows = read_corpus(corpus / "train.jsonl")
    valid_rows = read_corpus(corpus / "valid.jsonl")
    start = time.time()
    tok = train_tokenizer([r["text"] for r in train_rows])
    tok.save(str(data / "tokenizer.json"))
    (data / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n")
    print(f"tokenizer: {tok.get_vocab_size()} tokens in {time.time() - start:.0f} s")
    stats = json.loads((corpus / "stats.json").read_text())
    for name, rows in (("train", train_rows), ("valid", valid_rows)):
        ids = encode_rows(tok, rows)
        ids.tofile(data / f"{name}.bin")
        stats[f"{name}_tokens"] = int(ids.size)
        stats[f"{name}_characters"] = sum(len(r["text"]) for r in rows)
        print(f"{name}: {ids.size:,} tokens")
    shutil.copy(corpus / "heldout.txt", data / "heldout.txt")
    (data / "corpus_stats.json").write_text(json.dumps(stats, indent=2) + "\n")


# --- stage 2: training ------------------------------------------------------------------------


def heldout_nll(model, ids: list[int], bos_id: int, context: int, device) -> tuple[float, int]:
    """Sum of -log p over all ids (chunks of context - 1 after a BOS) and the count."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), context - 1):
            chunk = ids[start : start + context - 1]
            x = torch.tensor([[bos_id, *chunk]], device=device)
            logits = model(x).logits[0, :-1].float()  # [len(chunk), vocab]
            total += F.cross_entropy(logits, x[0, 1:], reduction="sum").item()
            count += len(chunk)
    return total, count


def heldout_perplexity(model_dir: Path, heldout: Path, device: str = "cpu") -> float:
    """The model card's figure: transformers in float32 on the saved (bf16) weights."""
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    ids = tok.encode(heldout.read_text(encoding="utf-8"), add_special_tokens=False).ids
    total, count = heldout_nll(
        model, ids, tok.token_to_id(BOS), model.config.max_position_embeddings, device
    )
    return math.exp(total / count)


def build_model(vocab_size: int, shape: dict = MODEL_SHAPE):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        attn_implementation="sdpa",
        **shape,
    )
    return LlamaForCausalLM(config)


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def plot_losses(history: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    tokens = np.asarray(history["train_tokens"]) / 1e6
    ax.plot(tokens, history["train_loss"], lw=0.8, alpha=0.8, label="train (batch)")
    ax.plot(
        np.asarray(history["val_tokens"]) / 1e6, history["val_loss"], "o-", ms=3, label="validation"
    )
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def steps_within_budget(steps: int, budget_s: float, elapsed_s: float, step_s: float, done: int):
    """Steps that end training within budget_s: those done plus what the rest of the budget
    holds at step_s each (5% left for validation); never more than asked, nor fewer than done+1."""
    fit = done + int(max(0.0, budget_s - elapsed_s) * 0.95 / step_s)
    return max(done + 1, min(steps, fit))


class StepBudget:
    """Caps the step count to a wall-clock budget (a GPU call has a fixed limit): times the
    steps FIRST..LAST (after torch.compile's first steps) and cuts the run to what fits. The
    warmup stays; the cosine decay then ends at the new last step."""

    FIRST, LAST = 10, 40

    def __init__(self, budget_s: float, device) -> None:
        self.budget_s, self.device, self.mark = budget_s, device, 0.0

    def _now(self) -> float:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.time()

    def at_step(self, step: int, steps: int, start: float) -> int:
        """The step count from here on (called before each step)."""
        if step == self.FIRST:
            self.mark = self._now()
        elif step == self.LAST:
            now = self._now()
            step_s = (now - self.mark) / (self.LAST - self.FIRST)
            fit = steps_within_budget(steps, self.budget_s, now - start, step_s, step)
            print(f"time budget {self.budget_s:.0f} s at {step_s * 1e3:.1f} ms/step: "
                  f"{fit} of {steps} steps", flush=True)  # fmt: skip
            return fit
        return steps


class BestWeights:
    """Keeps a CPU copy of the weights at the lowest validation loss and restores them at the
    end: a bigger model on the same small corpus may start to overfit before the last step."""

    def __init__(self, model) -> None:
        self.model, self.loss, self.step, self.state = model, math.inf, 0, None

    def offer(self, step: int, val_loss: float) -> None:
        if val_loss < self.loss:
            self.loss, self.step = val_loss, step
            self.state = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }

    def restore(self) -> int:
        """Load the best weights back; returns their step."""
        if self.state is not None:
            self.model.load_state_dict(self.state)
            print(f"kept the weights of step {self.step} (validation {self.loss:.3f})", flush=True)
        return self.step


def cmd_train(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(SEED)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    train_ids = torch.from_numpy(np.fromfile(data / "train.bin", dtype=np.uint16).astype(np.int64))
    valid_ids = torch.from_numpy(np.fromfile(data / "valid.bin", dtype=np.uint16).astype(np.int64))
    train_ids, valid_ids = train_ids.to(device), valid_ids.to(device)
    from tokenizers import Tokenizer

    vocab_size = Tokenizer.from_file(str(data / "tokenizer.json")).get_vocab_size()
    model = build_model(vocab_size, SHAPES[args.shape]).to(device)
    num_params = sum(p.numel() for p in model.parameters())  # tied: the embedding counts once
    print(f"{num_params:,} parameters on {device}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0},
        ],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        **fused,
    )
    forward = torch.compile(model) if args.compile else model
    gen = torch.Generator(device="cpu").manual_seed(SEED)
    offsets = torch.arange(CONTEXT + 1, device=device)

    def batch(ids: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = ids[starts.to(device)[:, None] + offsets]  # [B, CONTEXT + 1]
        return rows[:, :-1], rows[:, 1:]

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = forward(input_ids=x).logits  # [B, CONTEXT, vocab]
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    val_gen = torch.Generator(device="cpu").manual_seed(SEED + 1)
    val_starts = torch.randint(
        0, valid_ids.numel() - CONTEXT - 1, (args.val_batches, args.batch_size), generator=val_gen
    )

    def validate() -> float:
        model.eval()
        with torch.no_grad():
            losses = [loss_of(*batch(valid_ids, s)).item() for s in val_starts]
        model.train()
        return float(np.mean(losses))

    history: dict[str, list] = {
        k: [] for k in ("train_tokens", "train_loss", "val_tokens", "val_loss")
    }
    tokens_per_step = args.batch_size * CONTEXT
    warmup = max(1, int(args.steps * args.warmup))
    steps = args.steps
    best = BestWeights(model) if args.keep_best else None
    budget = StepBudget(args.time_budget, device) if args.time_budget else None
    model.train()
    start = time.time()
    step = 0
    while step < steps:
        if budget is not None:
            steps = budget.at_step(step, steps, start)
        lr = lr_at(step, steps, args.lr, warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(
            0, train_ids.numel() - CONTEXT - 1, (args.batch_size,), generator=gen
        )
        loss = loss_of(*batch(train_ids, starts))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seen = (step + 1) * tokens_per_step
        if step % args.log_every == 0 or step == steps - 1:
            history["train_tokens"].append(seen)
            history["train_loss"].append(loss.item())
        if (step + 1) % args.eval_every == 0 or step == steps - 1:
            val = validate()
            history["val_tokens"].append(seen)
            history["val_loss"].append(val)
            if best is not None:
                best.offer(step + 1, val)
            rate = seen / (time.time() - start)
            print(
                f"step {step + 1}/{steps} train {history['train_loss'][-1]:.3f} "
                f"val {val:.3f} lr {lr:.2e} {rate / 1e3:.1f} k tok/s {time.time() - start:.0f} s",
                flush=True,
            )
        step += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.time() - start
    kept_step = best.restore() if best is not None else steps
    save_folder(model, data, out)
    ppl = heldout_perplexity(out, data / "heldout.txt", device=str(device))
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    log = {
        "seed": SEED,
        "shape": args.shape,
        "num_parameters": num_params,
        "steps": steps,
        "steps_requested": args.steps,
        "kept_step": kept_step,
        "batch_size": args.batch_size,
        "context": CONTEXT,
        "tokens_seen": steps * tokens_per_step,
        "train_tokens_available": int(train_ids.numel()),
        "peak_lr": args.lr,
        "warmup_steps": warmup,
        "weight_decay": args.weight_decay,
        "train_seconds": round(train_seconds, 1),
        "device": device_name,
        "torch": torch.__version__,
        "compiled": bool(args.compile),
        "final_train_loss": history["train_loss"][-1],
        "final_val_loss": history["val_loss"][-1],
        "heldout_perplexity": ppl,
        "history": history,
    }
    (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    name = "demo model" if args.shape == "demo" else f"{args.shape} model"
    plot_losses(history, out / "loss_curve.png", f"Minerva {name}: {num_params / 1e6:.1f} M params")
    print(f"held-out perplexity {ppl:.3f}; trained {train_seconds:.0f} s; wrote {out}", flush=True)


def save_folder(model, data: Path, out: Path) -> None:
    """config.json + bf16 model.safetensors (or shards of at most MAX_SHARD_BYTES and
    model.safetensors.index.json) + generation_config.json + tokenizer files."""
    import tempfile

    import torch
    from transformers import GenerationConfig

    with tempfile.TemporaryDirectory() as tmp:
        model.to(torch.bfloat16).save_pretrained(tmp, max_shard_size=MAX_SHARD_BYTES)
        model.float()
        weights = sorted(Path(tmp).glob("*.safetensors"))
        index = sorted(Path(tmp).glob("model.safetensors.index.json"))
        for path in [Path(tmp) / "config.json", *weights, *index]:
            shutil.copy(path, out / path.name)
    too_big = [p.name for p in weights if (out / p.name).stat().st_size > 16 * 2**20]
    if too_big:  # one tensor bigger than a shard: the GPU machine could not send it back
        raise SystemExit(f"weight files over 16 MiB: {too_big}")
    gen = GenerationConfig(
        bos_token_id=1, eos_token_id=2, pad_token_id=0, max_length=CONTEXT, **GENERATION_DEFAULTS
    )
    gen.to_json_file(out / "generation_config.json")
    for name in TOKENIZER_FILES:
        shutil.copy(data / name, out / name)


# --- stage 3: model card ------------------------------------------------------------------------

SAMPLE_PROMPTS = [
    "The database",
    "In Python, a list",
    "To install the package,",
    "This function returns",
]
CHAT_SAMPLE = "What is a transaction?"


def minerva_samples(model_dir: Path) -> list[tuple[str, str]]:
    from minerva import LLM, SamplingParams

    llm = LLM(model=str(model_dir), device="cpu", dtype="float32", progress=False)
    params = [
        SamplingParams(max_tokens=60, temperature=0.7, top_k=40, repetition_penalty=1.1, seed=i)
        for i in range(len(SAMPLE_PROMPTS))
    ]
    outs = llm.generate(SAMPLE_PROMPTS, params)
    samples = [(p, o.outputs[0].text) for p, o in zip(SAMPLE_PROMPTS, outs)]
    chat = llm.chat(
        [{"role": "user", "content": CHAT_SAMPLE}],
        SamplingParams(max_tokens=80, temperature=0.7, top_k=40, repetition_penalty=1.1, seed=0),
    )
    samples.append((f"[chat] user: {CHAT_SAMPLE}", chat[0].outputs[0].text))
    return samples


def cmd_card(args: argparse.Namespace) -> None:
    model_dir, data = Path(args.model), Path(args.data)
    log = json.loads(Path(args.log).read_text())
    stats = json.loads((data / "corpus_stats.json").read_text())
    shutil.copy(data / "heldout.txt", model_dir / "heldout.txt")
    ppl = heldout_perplexity(model_dir, model_dir / "heldout.txt", device="cpu")
    samples = minerva_samples(model_dir)
    size = (model_dir / "model.safetensors").stat().st_size
    text = render_card(log, stats, ppl, samples, size)
    (model_dir / "README.md").write_text(text, encoding="utf-8")
    print(text)


def render_card(log: dict, stats: dict, ppl: float, samples, size: int) -> str:
    shape = MODEL_SHAPE
    sources = "\n".join(
        f"| {name} | `{s['root']}` | {s['license']} | {s['documents']:,} | "
        f"{s['characters'] / 1e6:.1f} M | {s['chat_examples']:,} |"
        for name, s in stats["sources"].items()
    )
    sample_text = "\n\n".join(
        f"**{prompt}**\n\n```text\n{prompt if not prompt.startswith('[chat]') else ''}"
        f"{completion}\n```"
        for prompt, completion in samples
    )
    epochs = log["tokens_seen"] / stats["train_tokens"]
    return CARD.format(
        params=log["num_parameters"],
        params_m=log["num_parameters"] / 1e6,
        size=size,
        size_mb=size / 1e6,
        vocab=VOCAB_SIZE,
        context=CONTEXT,
        specials=", ".join(f"`{t}`" for t in SPECIAL_TOKENS),
        sources=sources,
        train_tokens=stats["train_tokens"],
        valid_tokens=stats["valid_tokens"],
        heldout_bytes=stats["heldout_txt_bytes"],
        steps=log["steps"],
        batch=log["batch_size"],
        tokens_seen=log["tokens_seen"],
        epochs=epochs,
        lr=log["peak_lr"],
        warmup=log["warmup_steps"],
        wd=log["weight_decay"],
        device=log["device"],
        torch=log["torch"],
        seconds=log["train_seconds"],
        train_loss=log["final_train_loss"],
        val_loss=log["final_val_loss"],
        ppl=ppl,
        log_vocab=math.log(VOCAB_SIZE),
        uniform=VOCAB_SIZE,
        seed=SEED,
        samples=sample_text,
        gen=", ".join(f"{k}={v}" for k, v in GENERATION_DEFAULTS.items()),
        **shape,
    )


CARD = """\
# Minerva demo model

A tiny Llama-architecture language model that ships inside the `minerva` package, so that
`minerva generate`, `minerva chat` and `minerva serve` work on a fresh machine with no download.
It writes English-like text about software documentation. It is a demo: it knows little, makes
things up, and is not meant for any real use.

Made by `scripts/build_demo_corpus.py` and `scripts/train_demo_model.py` (seed {seed}).

## Size and architecture

| | |
| --- | --- |
| architecture | `LlamaForCausalLM` (RMSNorm, RoPE, SwiGLU MLP, grouped-query attention) |
| parameters | {params:,} ({params_m:.2f} M; input and output embeddings tied) |
| `model.safetensors` | {size:,} bytes ({size_mb:.1f} MB), bfloat16 |
| layers | {num_hidden_layers} |
| hidden size / MLP size | {hidden_size} / {intermediate_size} |
| attention heads / KV heads / head dim | {num_attention_heads} / {num_key_value_heads} / {head_dim} |
| context (`max_position_embeddings`) | {context} tokens |
| vocabulary | {vocab} tokens |

## Tokenizer

Byte-level BPE trained with the `tokenizers` library on the training split: {vocab} tokens,
the 256 byte symbols among them, so any text round-trips. Special tokens: {specials}. Encoding
puts `<s>` in front of a text (Llama style); `</s>` ends documents and chat turns. The chat
template (in `tokenizer_config.json`) renders

```text
<s><|system|>
...</s>
<|user|>
...</s>
<|assistant|>
```

and loads the same in Minerva's `Tokenizer.from_folder` and in transformers' `AutoTokenizer`.

## Training data

English prose from the HTML documentation that Debian 12 packages ship (code blocks, tables and
navigation removed; paragraphs deduplicated across the corpus). All of it is free to
redistribute under the licences below.

| source | folder | licence | documents | characters | chat examples |
| --- | --- | --- | --- | --- | --- |
{sources}

About 2% of the documents (chosen by a hash of their path) are held out: {valid_tokens:,}
tokens of validation data, of which `heldout.txt` ({heldout_bytes:,} bytes) ships here. The
training split has {train_tokens:,} tokens. Chat examples turn a section heading into a user
question ("Tell me about ...") and the paragraph under it into the assistant's answer.

## Training

| | |
| --- | --- |
| steps | {steps:,} of {batch} x {context} tokens |
| tokens seen | {tokens_seen:,} ({epochs:.1f} passes over the training split) |
| optimiser | AdamW (betas 0.9, 0.95; weight decay {wd} on matrices), peak LR {lr}, {warmup} warmup steps, cosine to 10% |
| precision | bfloat16 autocast, float32 master weights; saved as bfloat16 |
| hardware | one {device}, PyTorch {torch} |
| training time | {seconds:.0f} s (wall clock, including about 35 s of `torch.compile`) |
| final training loss | {train_loss:.3f} nats/token |
| final validation loss | {val_loss:.3f} nats/token |

![loss curve](loss_curve.png)

The corpus is small (about 10 M tokens), so the run length was picked by held-out loss: in the
published training, a longer run on the same data (4,000 steps of 128 x 512 tokens, 27 passes) fit the training split
better but ended at a validation loss of 3.27 and a held-out perplexity of 19.5, against 16.7 here.

## Evaluation

Held-out perplexity: **{ppl:.3f}**

Measured on `heldout.txt` with the saved bfloat16 weights, computed in float32: the text is
encoded without special tokens, cut into chunks of {context} - 1 tokens, each chunk follows a `<s>`,
and perplexity is exp(mean negative log-likelihood per token). A uniform guess over the
vocabulary scores {uniform} (log {log_vocab:.2f} nats). `tests/unit/test_demo_model.py`
recomputes it with Minerva's own model code and checks it against this figure.

## Samples

Generated by Minerva (`LLM(model=..., device="cpu", dtype="float32")`), temperature 0.7,
top-k 40, repetition penalty 1.1, seeds 0-3 (the chat: seed 0). The defaults in `generation_config.json`: {gen}.

{samples}

## Reproduce

```bash
# Debian 12:
apt-get install python3.11-doc postgresql-doc-15 sqlite3-doc python-django-doc nodejs-doc
apt-get install rust-doc cmake-doc python-sqlalchemy-doc sphinx-doc erlang-doc
python scripts/build_demo_corpus.py --out build/demo_data
python scripts/train_demo_model.py prepare --corpus build/demo_data --data build/demo_train
python scripts/train_demo_model.py train --data build/demo_train --out OUT --compile
# copy OUT's files into src/minerva/demo_model/, then:
python scripts/train_demo_model.py card --model src/minerva/demo_model --log OUT/train_log.json
```

Corpus, tokenizer and token ids are byte-for-byte reproducible; GPU training is seeded (same
data order and initial weights) but CUDA kernels may sum in a different order from run to run.

## Licence

The weights and tokenizer are distributed with Minerva under its Apache-2.0 licence. The
training texts belong to their authors (the Python Software Foundation, the PostgreSQL Global
Development Group, D. Richard Hipp, the Django Software Foundation, the Node.js, Rust, CMake
(Kitware), SQLAlchemy, Sphinx and Erlang/OTP contributors) under the licences listed above.

## Limitations

Six million parameters trained for a few minutes: expect fluent-looking but often wrong or
repetitive text, and no knowledge beyond the style of technical documentation.
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="train the tokenizer and write token ids")
    prep.add_argument("--corpus", default="build/demo_data")
    prep.add_argument("--data", default="build/demo_train")
    prep.set_defaults(func=cmd_prepare)
    train = sub.add_parser("train", help="train the model and write a Hugging Face folder")
    train.add_argument("--data", default="build/demo_train")
    train.add_argument("--out", required=True)
    train.add_argument("--steps", type=int, default=3000)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=3e-3)
    train.add_argument("--warmup", type=float, default=0.03, help="fraction of steps")
    train.add_argument("--weight-decay", type=float, default=0.1)
    train.add_argument("--eval-every", type=int, default=250)
    train.add_argument("--val-batches", type=int, default=8)
    train.add_argument("--log-every", type=int, default=10)
    train.add_argument("--device", default=None)
    train.add_argument("--compile", action="store_true", help="torch.compile the model")
    train.add_argument(
        "--shape", default="demo", choices=list(SHAPES), help="demo, or target: the demo's "
        "bigger sibling (same tokenizer and context) that the demo model drafts for",
    )  # fmt: skip
    train.add_argument(
        "--keep-best", action="store_true", help="save the weights of the lowest validation loss"
    )
    train.add_argument(
        "--time-budget", type=float, default=None, help="seconds: cut --steps to what fits"
    )
    train.set_defaults(func=cmd_train)
    card = sub.add_parser("card", help="write README.md: samples and perplexity via Minerva")
    card.add_argument("--model", default="src/minerva/demo_model")
    card.add_argument("--data", default="build/demo_train")
    card.add_argument("--log", required=True, help="train_log.json written by `train`")
    card.set_defaults(func=cmd_card)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
