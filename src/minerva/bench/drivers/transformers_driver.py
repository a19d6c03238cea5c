"""Hugging Face transformers as an offline driver: the reference every engine is compared to.

``generate`` batches up to ``max_batch_size`` prompts (option, default 16) of similar length,
left-padded; each batch runs to its longest requested output, as static batching does.
"""

from __future__ import annotations

import time

import torch

from minerva.bench.drivers.base import GREEDY_SETTINGS, OfflineDriver
from minerva.platform import resolve_dtype, resolve_platform, set_num_threads


class _TokenClock:
    """A transformers streamer that only notes when each new token reaches it."""

    def __init__(self, sync) -> None:
        self.sync = sync
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first hands the streamer the prompt
            self._prompt_seen = True
            return
        self.sync()
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class TransformersDriver(OfflineDriver):
    name = "transformers"

    def __init__(self, model, device="auto", dtype="auto", num_threads=None, options=None):
        super().__init__(model, device, dtype, num_threads, options)
        import transformers  # noqa: PLC0415

        set_num_threads(num_threads)
        self.platform = resolve_platform(device)
        config = transformers.AutoConfig.from_pretrained(model)
        ckpt = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        checkpoint_dtype = str(ckpt or "auto").removeprefix("torch.")
        torch_dtype = resolve_dtype(self.platform, dtype, checkpoint_dtype)
        major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
        dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
        self.model = (
            transformers.AutoModelForCausalLM.from_pretrained(model, **{dtype_kw: torch_dtype})
            .to(self.platform.device)
            .eval()
        )
        self.device_type = self.platform.kind
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.max_model_len = int(getattr(config, "max_position_embeddings", 0) or 0)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.pad_id = self.model.generation_config.pad_token_id
        if self.pad_id is None:
            self.pad_id = min(self.eos_ids) if self.eos_ids else 0
        self.max_batch_size = int(self.options.get("max_batch_size", 16))

    @torch.inference_mode()
    def _generate(
        self, ids: torch.Tensor, mask: torch.Tensor, n: int, ignore_eos: bool, streamer=None
    ):
        # Explicit settings win over the model's generation_config.json (which would otherwise
        # fill in e.g. its repetition_penalty even for greedy runs).
        return self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=n,
            min_new_tokens=n if ignore_eos else 0,
            min_length=0,
            do_sample=False,
            repetition_penalty=GREEDY_SETTINGS["repetition_penalty"],
            no_repeat_ngram_size=GREEDY_SETTINGS["no_repeat_ngram_size"],
            encoder_repetition_penalty=1.0,
            pad_token_id=self.pad_id,
            streamer=streamer,
        )

    def stream_timings(self, prompt_ids: list[int], max_tokens: int) -> list[float]:
        ids = torch.tensor([prompt_ids], device=self.platform.device)
        clock = _TokenClock(self.platform.synchronize)
        self._generate(ids, torch.ones_like(ids), max_tokens, True, clock)
        return clock.times

    def generate(self, prompts, max_tokens, ignore_eos=True):
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        outputs: list[list[int]] = [[] for _ in prompts]
        for start in range(0, len(order), self.max_batch_size):
            batch = order[start : start + self.max_batch_size]
            width = max(len(prompts[i]) for i in batch)
            rows = [[self.pad_id] * (width - len(prompts[i])) + list(prompts[i]) for i in batch]
            mask = [[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch]
            ids = torch.tensor(rows, device=self.platform.device)  # [batch, width], left-padded
            mask = torch.tensor(mask, device=self.platform.device)
            n = max(max_tokens[i] for i in batch)
            new = self._generate(ids, mask, n, ignore_eos)[:, width:].tolist()
            for row, i in zip(new, batch):
                outputs[i] = self._trim(row[: max_tokens[i]], ignore_eos)
        return outputs

    def _trim(self, ids: list[int], ignore_eos: bool) -> list[int]:
        if ignore_eos:
            return ids
        end = next((k for k, t in enumerate(ids) if t in self.eos_ids), None)
        return ids if end is None else ids[: end + 1]  # keep the EOS, like Minerva

    @torch.inference_mode()
    def token_logprobs(self, token_ids: list[int]) -> list[float]:
        ids = torch.tensor([token_ids], device=self.platform.device)
        logits = self.model(input_ids=ids).logits[0, :-1].float()  # [n - 1, vocab]
        logprobs = torch.log_softmax(logits, dim=-1)
        return logprobs.gather(1, ids[0, 1:].unsqueeze(1)).squeeze(1).tolist()

    def close(self) -> None:
        del self.model
