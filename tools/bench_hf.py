#!/usr/bin/env python3
"""Times a Hugging Face `transformers` training step, the baseline that
`essence bench` is compared with (tests/gpu/run.sh).

A randomly initialised model of the given config.json (e.g.
configs/models/qwen3-1.7b.json) trains on one packed batch of about --tokens
tokens: fp32 master weights, bf16 autocast, SDPA attention, fused AdamW.
Documents are packed without padding: with flash-attn installed, as one
sequence whose position_ids restart per document (transformers' varlen path);
otherwise each document runs as its own sequence and gradients accumulate.
Document lengths come from an essence shard (--shard) so that both engines
see the same kind of batch, or are drawn at random.

Prints one JSON line: tokens/s, ms/step, peak memory
(torch.cuda.max_memory_allocated), FLOPs per step and MFU against the card's
dense bf16 peak. Needs torch and transformers (not in tools/requirements.txt:
only a GPU machine runs this for real).

    python3 tools/bench_hf.py --config configs/models/qwen3-0.6b.json --tokens 8192
    python3 tools/bench_hf.py --config configs/models/qwen3-0.6b.json --tiny --device cpu
"""
import argparse
import json
import random
import sys
import time
from pathlib import Path

# Dense bf16 peaks (TFLOP/s) by card name, most specific first, as engine/peaks.c.
PEAKS = [("GH200", 989), ("H200", 989), ("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989),
         ("A100", 312), ("L40S", 362), ("L4", 121)]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="Hugging Face config.json of the model")
    p.add_argument("--tokens", type=int, default=8192, help="tokens in the packed batch")
    p.add_argument("--shard", help="essence shard whose leading documents give the lengths")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--tiny", action="store_true", help="shrink the model to a few layers (a CPU smoke run)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def doc_lengths(args, vocab):
    """Lengths of the packed documents, summing to about args.tokens."""
    if args.shard:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import shard_io  # noqa: E402 (tools/ is not a package)
        _, examples = shard_io.read(args.shard)
        lens = [len(e.tokens) for e in examples]
    else:
        rnd = random.Random(args.seed)
        lens = [rnd.randint(64, 2048) for _ in range(4 * args.tokens // 64 + 1)]
    out, total = [], 0
    for n in lens:
        n = min(n, args.tokens - total)
        if n < 2:
            break
        out.append(n)
        total += n
    if total < args.tokens // 2:
        raise SystemExit(f"bench_hf: {args.shard}: only {total} tokens, fewer than half of --tokens")
    return out


def step_flops(cfg, params_matmul, lens):
    """Training FLOPs of one step: 6 per weight per token for the matmuls, and
    causal attention (QK^T and PV over l(l+1)/2 pairs per document and head)."""
    heads, hd, layers = cfg.num_attention_heads, getattr(cfg, "head_dim", None), cfg.num_hidden_layers
    hd = hd or cfg.hidden_size // heads
    attn = sum(n * (n + 1) // 2 for n in lens) * 2 * 2 * heads * hd * layers
    return 6 * params_matmul * sum(lens) + 3 * attn


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as e:
        print(f"bench_hf: needs torch and transformers ({e})", file=sys.stderr)
        return 77
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_hf: torch sees no CUDA device", file=sys.stderr)
        return 77
    cfg_dict = json.loads(Path(args.config).read_text())
    if args.tiny:
        cfg_dict.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=16, vocab_size=min(cfg_dict.get("vocab_size", 4096), 4096),
                        bos_token_id=None, eos_token_id=None)
    for k in ("torch_dtype", "dtype"):
        cfg_dict.pop(k, None)
    model_type = cfg_dict.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **cfg_dict)
    try:
        import flash_attn  # noqa: F401
        attn = "flash_attention_2" if args.device == "cuda" else "sdpa"
    except ImportError:
        attn = "sdpa"
    cfg._attn_implementation = attn
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    with dev:  # initialise on the device: a 1.7B model would take a minute on the host
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).float()
    model.train()
    bf16 = args.device == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05, fused=args.device == "cuda")

    lens = doc_lengths(args, cfg.vocab_size)
    ntok = sum(lens)
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, cfg.vocab_size, (ntok,), generator=g).to(dev)
    starts = [0]
    for n in lens[:-1]:
        starts.append(starts[-1] + n)
    pos = torch.cat([torch.arange(n) for n in lens]).to(dev)
    labels = ids.clone()
    labels[torch.tensor(starts[1:], dtype=torch.long, device=dev)] = -100  # nothing predicts the next document
    ntargets = ntok - len(lens)
    varlen = attn == "flash_attention_2"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=bf16):
            if varlen:
                out = model(input_ids=ids[None], position_ids=pos[None], labels=labels[None])
                out.loss.backward()
            else:
                for a, n in zip(starts, lens):
                    out = model(input_ids=ids[None, a:a + n], labels=ids[None, a:a + n])
                    (out.loss * ((n - 1) / ntargets)).backward()
        opt.step()
        return out.loss.detach()

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    seconds = (time.perf_counter() - t0) / args.steps
    loss = float(loss)
    if loss != loss:
        print("bench_hf: the loss is NaN", file=sys.stderr)
        return 1

    embed = model.get_input_embeddings().weight.numel()
    nparams = sum(p.numel() for p in model.parameters())
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    # Matmul weights: everything but the embedding lookup; a tied LM head still multiplies.
    matmul = nparams - embed + (embed if tied else 0)
    flops = step_flops(cfg, matmul, lens)
    name, peak = "cpu", None
    if args.device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((tf * 1e12 for key, tf in PEAKS if key in name), None)
    res = {
        "engine": "transformers", "device": name, "model": Path(args.config).stem + (" (tiny)" if args.tiny else ""),
        "params": nparams, "attn": attn + (" varlen" if varlen else " per document"), "docs": len(lens),
        "tokens_per_step": ntok, "ms_per_step": 1e3 * seconds, "tokens_per_s": ntok / seconds,
        "flops_per_step": flops, "mfu": flops / seconds / peak if peak else None,
        "mem_peak": torch.cuda.max_memory_allocated() if args.device == "cuda" else None,
        "loss": loss, "steps": args.steps,
    }
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
