#!/usr/bin/env python3
"""Times a Hugging Face `transformers` training step, the baseline that
`essence bench` is compared with (tests/gpu/run.sh).

A randomly initialised model of the given config.json (e.g.
configs/models/qwen3-1.7b.json) trains on one packed batch of about --tokens
tokens: fp32 master weights, bf16 autocast, SDPA attention, fused AdamW
(foreach where this torch lacks it). Documents are packed without padding:
with a working flash-attn, as one sequence whose position_ids restart per
document (transformers' varlen path); otherwise each document runs as its own
sequence and gradients accumulate, or, with --packing mask, the whole batch
runs as one sequence under a block-diagonal causal mask (a 4D boolean mask,
which transformers passes to SDPA as it is). Document lengths come from an essence shard
(--shard) so that both engines see the same kind of batch, or are drawn at
random. The model is built from the config alone: nothing is downloaded.

Prints one JSON line: tokens/s and ms/step over the timed steps (after the
warm-up, between device synchronisations), peak memory of the timed steps
(torch.cuda.max_memory_allocated), FLOPs per step counted as essence counts
them (engine/flops.c) and MFU against the card's dense bf16 peak. Exit status
77 when torch, transformers or the GPU is missing. Needs torch and
transformers (not in tools/requirements.txt: only a GPU machine runs this for
real).

    python3 tools/bench_hf.py --config configs/models/qwen3-0.6b.json --tokens 8192
    python3 tools/bench_hf.py --config configs/models/qwen3-0.6b.json --tiny --device cpu
"""
import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

# Dense bf16 peaks (TFLOP/s) by card name, most specific first, as engine/peaks.c.
PEAKS = [("GH200", 989), ("H200", 989), ("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989),
         ("H800", 989), ("B200", 2250), ("A100", 312), ("A800", 312), ("L40S", 362), ("L40", 181),
         ("RTX 4090", 165), ("L4", 121), ("A10G", 70), ("A10", 125)]


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
    p.add_argument("--packing", default="auto", choices=["auto", "perdoc", "mask", "batch"],
                   help="auto: varlen with flash-attn, else one document at a time; mask: one "
                        "sequence under a block-diagonal causal mask; batch: documents of --doc-len "
                        "tokens as one (B, T) batch, how a user trains equal lengths")
    p.add_argument("--doc-len", type=int, help="documents of this many tokens (needed by --packing batch)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.tokens < 2:
        p.error("--steps must be >= 1, --warmup >= 0 and --tokens >= 2")
    if (args.packing == "batch") != (args.doc_len is not None):
        p.error("--packing batch and --doc-len go together")
    if args.doc_len is not None and not 2 <= args.doc_len <= args.tokens:
        p.error(f"--doc-len {args.doc_len} must be in [2, --tokens]")
    return args


def doc_lengths(args, vocab):
    """Lengths of the packed documents, summing to about args.tokens."""
    if args.doc_len:
        return [args.doc_len] * (args.tokens // args.doc_len)
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


def step_flops(cfg, params_body, params_head, lens, ntargets):
    """Training FLOPs of one step as essence counts them: 3x the forward's, which
    is 2 per weight per token for the matmuls of the layers, 2 per LM-head
    weight per supervised row (essence's head runs on those rows alone), and
    causal attention (QK^T and PV over l(l+1)/2 pairs per document and head)."""
    heads, hd, layers = cfg.num_attention_heads, getattr(cfg, "head_dim", None), cfg.num_hidden_layers
    hd = hd or cfg.hidden_size // heads
    attn = sum(n * (n + 1) // 2 for n in lens) * 2 * 2 * heads * hd * layers
    return 6 * params_body * sum(lens) + 6 * params_head * ntargets + 3 * attn


def flash_attn_works():
    """transformers' own check: flash-attn importable, recent enough, on a GPU."""
    try:
        from transformers.utils import is_flash_attn_2_available
        return bool(is_flash_attn_2_available())
    except Exception:  # a flash-attn built for another torch fails in odd ways
        return False


def make_optimizer(torch, params):
    """Fused AdamW where this torch and device have it, else the foreach one."""
    try:
        return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.05, fused=True), "adamw fused"
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.05, foreach=True), "adamw foreach"


def main(argv=None):
    args = parse_args(argv)
    # Never reach the network, even when run outside tests/gpu/run.sh.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as e:
        print(f"bench_hf: needs torch and transformers ({e})", file=sys.stderr)
        return 77
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_hf: torch sees no CUDA device", file=sys.stderr)
        return 77
    try:
        cfg_dict = json.loads(Path(args.config).read_text())
        cfg_dict["model_type"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"bench_hf: {args.config}: not a readable config.json with a model_type ({e})", file=sys.stderr)
        return 1
    if args.tiny:
        cfg_dict.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=16, vocab_size=min(cfg_dict.get("vocab_size", 4096), 4096),
                        bos_token_id=None, eos_token_id=None)
    for k in ("torch_dtype", "dtype"):
        cfg_dict.pop(k, None)
    model_type = cfg_dict.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **cfg_dict)
    attn = ("flash_attention_2" if args.packing == "auto" and args.device == "cuda" and flash_attn_works()
            else "sdpa")
    cfg._attn_implementation = attn
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    with dev:  # initialise on the device: a 1.7B model would take a minute on the host
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).float()
    model.train()
    bf16 = args.device == "cuda"
    if args.device == "cuda":
        opt, opt_name = make_optimizer(torch, list(model.parameters()))
    else:
        opt, opt_name = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05), "adamw"

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
    mask = None
    if args.packing == "mask":
        doc = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens)).to(dev)
        idx = torch.arange(ntok, device=dev)
        # (1, 1, T, T): True where query i may attend key j (same document, j <= i).
        mask = ((doc[:, None] == doc[None, :]) & (idx[None, :] <= idx[:, None]))[None, None]

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=bf16):
            if args.packing == "batch":
                out = model(input_ids=ids.view(len(lens), -1), labels=ids.view(len(lens), -1))
                out.loss.backward()
            elif varlen or mask is not None:
                out = model(input_ids=ids[None], position_ids=pos[None], labels=labels[None],
                            attention_mask=mask)
                out.loss.backward()
            else:
                for a, n in zip(starts, lens):
                    out = model(input_ids=ids[None, a:a + n], labels=ids[None, a:a + n])
                    (out.loss * ((n - 1) / ntargets)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as essence's step: norm, clipping, AdamW
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
    head = model.get_output_embeddings().weight.numel()
    nparams = sum(p.numel() for p in model.parameters())
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    # Layer weights: everything but the embedding lookup and the LM head (norm
    # weights included, a rounding error); a tied head is counted once in nparams.
    body = nparams - embed - (0 if tied else head)
    flops = step_flops(cfg, body, head, lens, ntargets)
    name, peak = "cpu", None
    if args.device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((tf * 1e12 for key, tf in PEAKS if key in name), None)
    res = {
        "engine": "transformers", "device": name, "model": Path(args.config).stem + (" (tiny)" if args.tiny else ""),
        "params": nparams, "attn": attn + (" varlen" if varlen else " block mask" if mask is not None
                                          else " batch" if args.packing == "batch" else " per document"),
        "docs": len(lens),
        "optimizer": opt_name, "autocast": "bf16" if bf16 else None,
        "tokens_per_step": ntok, "ms_per_step": 1e3 * seconds, "tokens_per_s": ntok / seconds,
        "flops_per_step": flops, "mfu": flops / seconds / peak if peak else None,
        "mem_peak": torch.cuda.max_memory_allocated() if args.device == "cuda" else None,
        "loss": loss, "steps": args.steps,
    }
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
