#!/usr/bin/env python3
"""Per-op cost model of one training step, and its comparison with `essence bench`.

For a model config (Hugging Face config.json: qwen3, qwen2, llama) and a packed
micro-batch, counts the FLOPs and the fewest device-memory bytes of every
backend op a step issues, in the order engine/model.c, engine/distill.c and
engine/optim.c issue them, and the time each call should take at two
ceilings: the measured bf16 matmul rate and the memory bandwidth. A call's
floor is the larger of its two times; an op's floor is the sum over its calls.

    python3 perf/cost_model.py                       # Qwen3-0.6B and 1.7B, 8192 tokens
    python3 perf/cost_model.py --model CONFIG.json --tokens 8192 --docs 22
    python3 perf/cost_model.py --compare BENCH.json  # bench's per-op table against the model

--compare reads `essence bench --json` output: one JSON object per line, or
the bundle tests/gpu/run.sh writes (`== name` lines between them); entries of
other engines are passed over. Each essence entry is matched to a config by
its parameter count (or --model), and modelled at the tokens, documents and
chunk rows its op-timer step ran.

Bytes are counted as each op must move them at least once: bf16 weights and
activations, fp32 gradients (accumulated: read and written), fp32 master
weights and AdamW moments. Attention backward counts the 2.5x forward FLOPs
a FlashAttention-style kernel does (scores recomputed); engine/flops.c's MFU
counts 2x, as model FLOPs.
"""
import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BF16, F32, I32 = 2, 4, 4
# The measured H100 ceilings; pass the card's own with --tflops/--tbps.
DEFAULT_TFLOPS, DEFAULT_TBPS = 790.0, 3.0
DATASHEET_TFLOPS = 989.0  # engine/peaks.c's dense bf16 peak for H100 SXM / H200: MFU's denominator
# The op-timer's names (engine/op_timer.h), in the order bench prints them.
# `add` is gpt2's residual add (and older builds'): these models issue none.
# rope_fwd/rope_bwd: issued before qkv_fwd/qkv_bwd fused them, so kept for older bench files.
OPS = ["upload", "upload_async", "zero", "embed_fwd", "embed_bwd", "matmul_fwd", "matmul_bwd", "rmsnorm_fwd",
       "rmsnorm_bwd", "add_rmsnorm_fwd", "rope_fwd", "rope_bwd", "qkv_fwd", "qkv_bwd", "attention_fwd",
       "attention_bwd", "swiglu_fwd", "swiglu_bwd", "add", "gather_rows", "scatter_add_rows", "distill_loss",
       "sumsq", "count_nonfinite", "adamw"]


class Shape:
    """The dimensions engine/config.c reads from a config.json."""

    def __init__(self, path):
        with open(path) as f:
            c = json.load(f)
        self.name = os.path.splitext(os.path.basename(path))[0]
        self.type = c.get("model_type", "")
        if self.type not in ("qwen3", "qwen2", "llama"):
            raise SystemExit(f"cost_model: {path}: model_type '{self.type}' is not modelled "
                             "(qwen3, qwen2, llama)")
        self.C = c["hidden_size"]
        self.L = c["num_hidden_layers"]
        self.H = c["num_attention_heads"]
        self.KVH = c.get("num_key_value_heads", self.H)
        self.D = c.get("head_dim") or self.C // self.H
        self.F = c["intermediate_size"]
        self.V = c["vocab_size"]
        self.tied = c.get("tie_word_embeddings", False)
        self.qk_norm = self.type == "qwen3"
        self.qkv_bias = self.type == "qwen2" or c.get("attention_bias", False)

    def params(self):
        C, H, KVH, D, F = self.C, self.H, self.KVH, self.D, self.F
        layer = C * H * D * 2 + 2 * C * KVH * D + 3 * C * F + 2 * C
        if self.qkv_bias:
            layer += H * D + 2 * KVH * D
        if self.qk_norm:
            layer += 2 * D
        return self.V * C * (1 if self.tied else 2) + self.L * layer + C


class Model:
    """Accumulates (FLOPs, bytes, floor seconds, calls) per op."""

    def __init__(self, tflops, tbps):
        self.rate, self.bw = tflops * 1e12, tbps * 1e12
        self.ops = {op: [0.0, 0.0, 0.0, 0] for op in OPS}
        self.head = {}  # the LM head's share of matmul_fwd/bwd, keyed the same way
        self.in_head = False

    def call(self, op, flops, nbytes, calls=1):
        """One part of an op: `calls` is 0 for the second GEMM of a matmul_bwd call."""
        for table in (self.ops, self.head) if self.in_head else (self.ops,):
            e = table.setdefault(op, [0.0, 0.0, 0.0, 0])
            e[0] += flops
            e[1] += nbytes
            e[2] += max(flops / self.rate, nbytes / self.bw)
            e[3] += calls

    # ---- the ops, with the bytes each must move ------------------------------
    def matmul_fwd(self, N, C, OC):
        self.call("matmul_fwd", 2.0 * N * C * OC, BF16 * (N * C + OC * C + N * OC))

    def matmul_bwd(self, N, C, OC, dinp=True, accumulate=False):
        if dinp:  # dinp (N, C) = dout (N, OC) @ w (OC, C); read back when accumulating
            self.call("matmul_bwd", 2.0 * N * C * OC,
                      BF16 * (N * OC + OC * C + N * C * (2 if accumulate else 1)), calls=0)
        # dw (OC, C) += dout^T @ inp: the fp32 gradient is read and written
        self.call("matmul_bwd", 2.0 * N * C * OC, BF16 * (N * OC + N * C) + 2 * F32 * OC * C)

    def rmsnorm_fwd(self, rows, C):
        self.call("rmsnorm_fwd", 0, BF16 * (2 * rows * C + C) + F32 * rows)

    def add_rmsnorm_fwd(self, rows, C):
        """res = a + b and its norm in one pass: a, b read, res and out written."""
        self.call("add_rmsnorm_fwd", 0, BF16 * (4 * rows * C + C) + F32 * rows)

    def rmsnorm_bwd(self, rows, C, accumulate):
        self.call("rmsnorm_bwd", 0, BF16 * (rows * C * (4 if accumulate else 3) + C)
                  + F32 * (rows + 2 * C))

    def qkv(self, op, N, H, KVH, D, qk_norm):
        """The fused QKV rows split, normalised and rotated: (N, (H + 2 KVH) D) in,
        the same out; with qk-norm the rows' rstd and (backward) the forward's input."""
        W = (H + 2 * KVH) * D
        nb = BF16 * 2 * N * W + I32 * N + F32 * D // 2
        if qk_norm:
            nb += F32 * N * (H + KVH) + BF16 * 2 * D + (BF16 * N * W + 2 * F32 * D if op == "qkv_bwd" else 0)
        self.call(op, 0, nb)

    def elementwise(self, op, n, tensors):
        self.call(op, 0, BF16 * n * tensors)


def auto_chunk(s, N):
    """engine/distill.c's chunk for loss.chunk_rows = 0: 1.5 GiB of bf16 logits, no teacher."""
    return min(N, max(256, (3 << 29) // (s.V * BF16) // 256 * 256))


def step(m, s, N, docs, nsup, chunk):
    """The ops of one optimizer step of one micro-batch: forward, loss, backward, update."""
    C, H, KVH, D, F, V, L = s.C, s.H, s.KVH, s.D, s.F, s.V, s.L
    lens = [N // docs + (1 if i < N % docs else 0) for i in range(docs)]
    pairs = sum(n * (n + 1) / 2 for n in lens)
    att_fwd = 4.0 * H * D * pairs  # scores and values, causal
    qkv_bytes = BF16 * N * D * (H + 2 * KVH)

    # host to device, asynchronous from pinned staging: tokens, positions,
    # document bounds; rows, targets, weights
    m.call("upload_async", 0, I32 * (2 * N + docs + 1), calls=3)
    m.call("upload_async", 0, (2 * I32 + F32) * nsup, calls=3)
    m.call("zero", 0, F32 * s.params())  # the step's gradients
    m.call("embed_fwd", 0, BF16 * 2 * N * C + I32 * N)
    m.rmsnorm_fwd(N, C)  # layer 0's input norm; the others come with the residual add before them
    for _ in range(L):
        m.matmul_fwd(N, C, (H + 2 * KVH) * D)  # q, k, v in one
        m.qkv("qkv_fwd", N, H, KVH, D, s.qk_norm)
        m.call("attention_fwd", att_fwd, qkv_bytes + BF16 * N * H * D + F32 * N * H)
        m.matmul_fwd(N, H * D, C)
        m.add_rmsnorm_fwd(N, C)  # residual, then the MLP's norm
        m.matmul_fwd(N, C, 2 * F)  # gate and up in one
        m.elementwise("swiglu_fwd", N * F, 3)
        m.matmul_fwd(N, F, C)
        m.add_rmsnorm_fwd(N, C)  # residual, then the next layer's input norm or the final norm

    # the LM head and loss on the supervised rows, `chunk` at a time
    m.call("zero", 0, BF16 * N * C)  # d(hidden)
    m.in_head = True
    for r0 in range(0, nsup, chunk):
        r = min(chunk, nsup - r0)
        m.call("gather_rows", 0, BF16 * 2 * r * C + I32 * r)
        m.matmul_fwd(r, C, V)
        # one pass for the row's max and sum (a row of 151936 logits does not
        # fit in shared memory), one that reads and overwrites with the gradient
        m.call("distill_loss", 0, BF16 * 3 * r * V + (I32 + F32) * r)
        m.matmul_bwd(r, C, V)
        m.call("scatter_add_rows", 0, BF16 * 3 * r * C + I32 * r)
    m.in_head = False

    m.rmsnorm_bwd(N, C, False)
    for _ in range(L):
        m.matmul_bwd(N, F, C)  # down
        m.elementwise("swiglu_bwd", N * F, 5)
        m.matmul_bwd(N, C, 2 * F)  # gate|up
        m.rmsnorm_bwd(N, C, True)
        m.matmul_bwd(N, H * D, C)  # o
        m.call("attention_bwd", 2.5 * att_fwd, 2 * qkv_bytes + 2 * BF16 * N * H * D + F32 * N * H)
        m.qkv("qkv_bwd", N, H, KVH, D, s.qk_norm)
        m.matmul_bwd(N, C, (H + 2 * KVH) * D)  # q|k|v
        m.rmsnorm_bwd(N, C, True)
    m.call("embed_bwd", 0, BF16 * N * C + 2 * F32 * N * C + I32 * N)

    P = s.params()
    m.call("sumsq", 0, F32 * P)
    # clipping is folded into adamw (its gscale): no pass of its own.
    # grads, m, v, master read; m, v, master written; bf16 params written;
    # one call for all tensors (engine/optim.c: decay from a segment table)
    m.call("adamw", 0, P * (4 * F32 + 3 * F32 + BF16))


def model_flops(s, N, docs, nsup):
    """engine/flops.c's count for one step: 3x forward, model FLOPs."""
    lens = [N // docs + (1 if i < N % docs else 0) for i in range(docs)]
    per_token = s.C * s.H * s.D * 2 + 2 * s.C * s.KVH * s.D + 3 * s.C * s.F
    fwd = 2.0 * per_token * N * s.L + sum(4.0 * s.H * s.D * n * (n + 1) / 2 for n in lens) * s.L
    return 3 * (fwd + 2.0 * s.C * s.V * nsup)


def bound(m, fl, nb):
    return "matmul" if fl / m.rate > nb / m.bw else "memory"


def table(s, args, N, docs, nsup, chunk, show=True):
    m = Model(args.tflops, args.tbps)
    chunk = chunk or auto_chunk(s, N)
    step(m, s, N, docs, nsup, chunk)
    total = sum(e[2] for e in m.ops.values())
    mf = model_flops(s, N, docs, nsup)
    print(f"\n{s.name}: {s.params() / 1e9:.3f}B params, {N} tokens in {docs} documents, {nsup} "
          f"supervised, LM head {chunk} rows a chunk; ceilings {args.tflops:g} TFLOP/s, "
          f"{args.tbps:g} TB/s")
    if show:
        print(f"{'op':<17}{'calls':>6}{'GFLOP':>10}{'GB':>9}{'floor ms':>10}{'share':>7}  bound")
        for op in OPS:
            fl, nb, t, n = m.ops[op]
            if n:
                print(f"{op:<17}{n:>6}{fl / 1e9:>10.1f}{nb / 1e9:>9.2f}{1e3 * t:>10.2f}"
                      f"{100 * t / total:>6.1f}%  {bound(m, fl, nb)}")
            if op in ("matmul_fwd", "matmul_bwd") and op in m.head:
                fl, nb, t, n = m.head[op]
                print(f"{'  of it LM head':<17}{n:>6}{fl / 1e9:>10.1f}{nb / 1e9:>9.2f}{1e3 * t:>10.2f}"
                      f"{100 * t / total:>6.1f}%  {bound(m, fl, nb)}")
        print(f"{'total':<17}{sum(e[3] for e in m.ops.values()):>6}"
              f"{sum(e[0] for e in m.ops.values()) / 1e9:>10.1f}"
              f"{sum(e[1] for e in m.ops.values()) / 1e9:>9.2f}{1e3 * total:>10.2f}")
    print(f"floor: {1e3 * total:.1f} ms, {N / total:.0f} tok/s, MFU {100 * mf / total / (DATASHEET_TFLOPS * 1e12):.1f}% "
          f"of {DATASHEET_TFLOPS:g} TFLOP/s (model FLOPs {mf:.4g} a step)")
    return m, total


def configs():
    return sorted(glob.glob(os.path.join(ROOT, "configs", "models", "*.json")))


def shape_of(entry, model_arg):
    if model_arg:
        return Shape(model_arg)
    for path in configs():
        try:
            s = Shape(path)
        except (SystemExit, KeyError):
            continue
        if s.params() == entry.get("params"):
            return s
    raise SystemExit(f"cost_model: no config in configs/models has {entry.get('params')} parameters; "
                     "name one with --model")


def bench_entries(path):
    """(label, object) for every essence bench line of a file."""
    label = os.path.basename(path)
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("== "):
                label = line[3:]
            elif line.startswith("{"):
                e = json.loads(line)
                if "ops" in e and e.get("engine", "essence") == "essence":
                    yield label, e


def op_tokens(e, s, nsup_frac):
    """Tokens of the op-timer step: printed by newer builds, else solved from
    matmul_fwd's FLOPs (linear in the tokens, the LM head on the supervised share)."""
    if e.get("op_tokens_per_step"):
        return int(round(e["op_tokens_per_step"])), True
    mf = e["ops"]["matmul_fwd"]
    flops = mf["ms_per_step"] * 1e-3 * mf["flops_per_s"]
    per_token = s.L * (s.C * s.H * s.D * 2 + 2 * s.C * s.KVH * s.D + 3 * s.C * s.F) + s.C * s.V * nsup_frac
    return int(round(flops / (2.0 * per_token))), False


def compare(args):
    for label, e in bench_entries(args.compare):
        s = shape_of(e, args.model)
        frac = e["supervised_per_step"] / e["tokens_per_step"]
        N, printed = op_tokens(e, s, frac)
        # documents in the op step: bench's count when it printed one, else
        # the synthetic corpus's mean length
        docs = int(round(e.get("op_docs_per_step") or max(1, N / args.doc_len)))
        nsup = int(round(e.get("op_supervised_per_step") or N * frac))
        chunk = e.get("chunk_rows") or args.chunk or 256  # 256: the default before bench printed it
        print(f"\n=== {label}: essence bench, {e['ms_per_step']:.1f} ms/step at {e['tokens_per_step']:.0f} "
              f"tokens, MFU {100 * e['mfu']:.1f}%; op-timer step {N} tokens "
              f"({'printed' if printed else 'solved from matmul_fwd FLOPs'})")
        m, total = table(s, args, N, docs, nsup, chunk, show=False)
        ops = e["ops"]
        measured = sum(v["ms_per_step"] for v in ops.values())
        # calls: bench's over the model's; a mismatch means the model misses or adds a call
        print(f"\n{'op':<17}{'calls':>9}{'bench ms':>9}{'floor ms':>9}{'x floor':>8}{'achieved':>16}  "
              "time over floor")
        rows = []
        for op in OPS + ["other"]:
            got = ops.get(op, {}).get("ms_per_step")
            fl, nb, t, n = m.ops.get(op, [0, 0, 0, 0])
            if got is None and not n:
                continue
            got = got or 0.0
            if op == "other":
                ach = "host, launches"
            elif fl:
                ach = f"{fl / (got * 1e-3) / 1e12:.0f} TFLOP/s" if got else "-"
            else:
                ach = f"{nb / (got * 1e-3) / 1e12:.2f} TB/s" if got else "-"
            over = got - 1e3 * t
            bc = ops.get(op, {}).get("calls_per_step")
            calls = f"{bc:.0f}/{n}" if bc is not None else f"-/{n}" if n else ""
            rows.append((op, calls, got, 1e3 * t, ach, over))
        for op, calls, got, fl, ach, over in rows:
            x = f"{got / fl:.1f}" if fl > 0 else "-"
            print(f"{op:<17}{calls:>9}{got:>9.2f}{fl:>9.2f}{x:>8}{ach:>16}  "
                  f"{over:+.2f} ms ({100 * over / measured:.0f}%)")
        print(f"{'total':<17}{'':>9}{measured:>9.2f}{1e3 * total:>9.2f}{measured / (1e3 * total):>8.1f}")
        worst = sorted(rows, key=lambda r: -r[5])[:4]
        print("largest gaps: " + ", ".join(f"{r[0]} {r[5]:+.1f} ms" for r in worst))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help="config.json (default: Qwen3-0.6B and 1.7B)")
    ap.add_argument("--tokens", type=int, default=8192, help="tokens in the packed micro-batch")
    ap.add_argument("--docs", type=int, default=22,
                    help="documents in it, of equal length (22: the synthetic corpus's 8k batches)")
    ap.add_argument("--doc-len", type=float, default=372, help="--compare: mean document length "
                    "when bench printed no count")
    ap.add_argument("--supervised", type=float, default=1.0, help="share of tokens with a loss")
    ap.add_argument("--chunk", type=int, default=0,
                    help="LM-head rows a chunk (loss.chunk_rows; 0: the engine's rule, auto_chunk)")
    ap.add_argument("--tflops", type=float, default=DEFAULT_TFLOPS, help="bf16 matmul ceiling")
    ap.add_argument("--tbps", type=float, default=DEFAULT_TBPS, help="memory bandwidth ceiling")
    ap.add_argument("--compare", metavar="BENCH", help="essence bench --json output to read against the model")
    args = ap.parse_args()
    if args.compare:
        if args.model and len(args.model) > 1:
            ap.error("--compare takes one --model")
        args.model = args.model[0] if args.model else None
        compare(args)
        return
    for path in args.model or [os.path.join(ROOT, "configs/models/qwen3-0.6b.json"),
                               os.path.join(ROOT, "configs/models/qwen3-1.7b.json")]:
        s = Shape(path)
        table(s, args, args.tokens, args.docs, int(round(args.tokens * args.supervised)), args.chunk)


if __name__ == "__main__":
    sys.exit(main())
