#!/usr/bin/env python3
"""CPU generation, essence against Hugging Face transformers, side by side in
one run (issue: CPU generation with fewer bytes per token, and a fast load).

For each model (a random one of the config's shape, written once as an fp32
safetensors directory) and each batch size, in alternating rounds, runs
`essence generate --device cpu` with each --weights format and transformers'
`generate` (fp32, greedy, the same prompts: B random prompts of --prompt-len
tokens, --max-new new tokens each, no stop token). tok/s is new tokens over
the generation's time (prefill included, load excluded), as essence's own line
reports it; load is the time to read the weights (and, for essence, to pack
the bf16/int8 copies). Interleaving keeps a load change on a shared machine
from landing on one side only. Prints each round, then the medians and the
ratios essence / transformers, and the whole process's wall time on each side
(start, imports, load, generate: what a user waits for; transformers' side
also runs its two-token warm-up).

  python3 perf/gen_vs_hf.py [--rounds 3] [--batches 1 8] [--threads 2] [--wait-policy passive]
      [--models configs/models/qwen3-0.6b.json configs/models/qwen3-teacher-small.json]

--python names a Python with torch and transformers (default /tmp/tv/bin/python
when it exists, else this one); without them the transformers side is skipped,
said so, and the models are written with numpy instead.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))
from cost_table import machine  # noqa: E402

MODELS = ["configs/models/qwen3-0.6b.json", "configs/models/qwen3-teacher-small.json",
          "configs/models/qwen3-student-tiny.json"]
FORMATS = ["fp32", "bf16", "int8"]

# Runs in --python: writes a random model, or times transformers' generate.
HF_SIDE = r"""
import json, sys, time
import torch, transformers
mode, model_dir = sys.argv[1], sys.argv[2]
if mode == "make":
    cfg = transformers.AutoConfig.from_pretrained(sys.argv[3])
    torch.manual_seed(0)
    m = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    m.save_pretrained(model_dir, safe_serialization=True, max_shard_size="100GB")
    sys.exit(0)
prompts, max_new, threads = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
t0 = time.perf_counter()
m = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
load = time.perf_counter() - t0
ids = torch.tensor([json.loads(l)["prompt_ids"] for l in open(prompts)])
kw = dict(max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False, pad_token_id=0,
          attention_mask=torch.ones_like(ids))
with torch.inference_mode():
    m.generate(ids[:, :8], **dict(kw, max_new_tokens=2, min_new_tokens=2))  # warm-up
    t0 = time.perf_counter()
    out = m.generate(ids, **kw)
    dt = time.perf_counter() - t0
print(json.dumps(dict(tok_s=(out.shape[1] - ids.shape[1]) * ids.shape[0] / dt, load_s=load)))
"""


def has_hf(python):
    p = subprocess.run([python, "-c", "import torch, transformers"], capture_output=True, text=True)
    return p.returncode == 0


def write_numpy_model(config, out):
    """A random fp32 model of config's shape (normal 0.02, norms 1) with its config.json."""
    import numpy as np
    c = json.loads(Path(config).read_text())
    C, F, V, L = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    D = c.get("head_dim") or C // c["num_attention_heads"]
    H, KVH = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    shapes = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}
    if not c.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (V, C)
    for l in range(L):
        p = f"model.layers.{l}."
        shapes.update({p + "input_layernorm.weight": (C,), p + "post_attention_layernorm.weight": (C,),
                       p + "self_attn.q_proj.weight": (H * D, C), p + "self_attn.k_proj.weight": (KVH * D, C),
                       p + "self_attn.v_proj.weight": (KVH * D, C), p + "self_attn.o_proj.weight": (C, H * D),
                       p + "self_attn.q_norm.weight": (D,), p + "self_attn.k_norm.weight": (D,),
                       p + "mlp.gate_proj.weight": (F, C), p + "mlp.up_proj.weight": (F, C),
                       p + "mlp.down_proj.weight": (C, F)})
    header, off = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    rng = np.random.default_rng(0)
    out.mkdir(parents=True)
    with open(out / "model.safetensors", "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h)
        for name, shape in shapes.items():
            x = np.ones(shape, np.float32) if name.endswith("norm.weight") else \
                (rng.standard_normal(shape, np.float32) * 0.02)
            f.write(x.astype("<f4").tobytes())
    (out / "config.json").write_text(json.dumps(c))


def make_model(config, out, python, hf):
    if hf:
        p = subprocess.run([python, "-c", HF_SIDE, "make", str(out), str(ROOT / config)], capture_output=True,
                           text=True)
        if p.returncode:
            sys.exit(f"gen_vs_hf: writing {config} failed: {p.stderr.strip()[-500:]}")
    else:
        write_numpy_model(ROOT / config, out)
    # No stop token on either side: every sample makes --max-new tokens.
    for name in ("config.json", "generation_config.json"):
        path = out / name
        if path.exists():
            c = json.loads(path.read_text())
            c.pop("eos_token_id", None)
            path.write_text(json.dumps(c))


def side_env(threads, wait_policy):
    return dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY=wait_policy)


def run_essence(binary, model, prompts, max_new, batch, weights, threads, wait_policy):
    env = side_env(threads, wait_policy)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        p = subprocess.run([binary, "generate", "--model", model, "--in", prompts, "--out", f"{tmp}/out.jsonl",
                            "--max-new", str(max_new), "--batch", str(batch), "--weights", weights,
                            "--device", "cpu"], capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
    if p.returncode:
        sys.exit(f"gen_vs_hf: essence generate on {model} failed: {p.stderr.strip()}")
    m = re.search(r"\(([\d.]+) tok/s.*load ([\d.]+) s", p.stderr)
    return dict(tok_s=float(m.group(1)), load_s=float(m.group(2)), wall_s=wall)


def run_hf(python, model, prompts, max_new, threads, wait_policy):
    t0 = time.perf_counter()
    p = subprocess.run([python, "-c", HF_SIDE, "run", model, prompts, str(max_new), str(threads)],
                       capture_output=True, text=True, env=side_env(threads, wait_policy))
    if p.returncode:
        sys.exit(f"gen_vs_hf: transformers generate on {model} failed: {p.stderr.strip()[-500:]}")
    return dict(json.loads(p.stdout.strip().splitlines()[-1]), wall_s=time.perf_counter() - t0)


def write_prompts(path, n, length, vocab, seed):
    import random
    r = random.Random(seed)
    path.write_text("".join(json.dumps({"id": i, "prompt_ids": [r.randrange(vocab) for _ in range(length)]}) + "\n"
                            for i in range(n)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS, help="Hugging Face config.json files")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--formats", nargs="+", default=FORMATS, choices=FORMATS)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per model and batch")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS for essence, torch threads for HF")
    ap.add_argument("--wait-policy", default="passive", choices=["passive", "active"],
                    help="OMP_WAIT_POLICY of both sides (passive: idle threads sleep; on a shared machine spinning "
                         "threads stall a parallel region for a whole time slice)")
    ap.add_argument("--essence", default=str(ROOT / "build" / "essence"))
    ap.add_argument("--python", default="/tmp/tv/bin/python" if os.access("/tmp/tv/bin/python", os.X_OK)
                    else sys.executable, help="a Python with torch and transformers")
    ap.add_argument("--work", help="folder for the random models (default: a temporary one)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if not os.access(args.essence, os.X_OK):
        sys.exit(f"gen_vs_hf: {args.essence}: no essence binary (build it: ninja -C build)")
    hf = has_hf(args.python)
    if not hf:
        print(f"gen_vs_hf: {args.python} has no torch/transformers: the transformers side is skipped",
              file=sys.stderr)
    print(f"machine: {machine()}, {args.threads} threads, OMP_WAIT_POLICY={args.wait_policy}; "
          f"prompts of {args.prompt_len} tokens, "
          f"{args.max_new} new tokens, greedy", flush=True)
    work_tmp = None if args.work else tempfile.TemporaryDirectory()
    work = Path(args.work or work_tmp.name)
    results = {}
    for config in args.models:
        name = Path(config).stem
        mdir = work / name
        if not (mdir / "config.json").exists():
            make_model(config, mdir, args.python, hf)
        vocab = json.loads((mdir / "config.json").read_text())["vocab_size"]
        for batch in args.batches:
            prompts = work / f"{name}-b{batch}.jsonl"
            write_prompts(prompts, batch, args.prompt_len, vocab, seed=batch)
            es = {f: [] for f in args.formats}
            hfr = []
            for k in range(args.rounds):
                line = f"{name} batch {batch} round {k + 1}:"
                for f in args.formats:
                    es[f].append(run_essence(args.essence, str(mdir), str(prompts), args.max_new, batch, f,
                                             args.threads, args.wait_policy))
                    line += f" essence {f} {es[f][-1]['tok_s']:.1f} tok/s (load {es[f][-1]['load_s']:.2f} s),"
                if hf:
                    hfr.append(run_hf(args.python, str(mdir), str(prompts), args.max_new, args.threads,
                                      args.wait_policy))
                    line += f" transformers {hfr[-1]['tok_s']:.1f} tok/s (load {hfr[-1]['load_s']:.2f} s)"
                print(line.rstrip(","), flush=True)
            r = {f: dict(tok_s=statistics.median(x["tok_s"] for x in es[f]),
                         load_s=statistics.median(x["load_s"] for x in es[f]),
                         wall_s=statistics.median(x["wall_s"] for x in es[f])) for f in args.formats}
            summary = f"{name} batch {batch} (medians):"
            if hf:
                r["transformers"] = dict(tok_s=statistics.median(x["tok_s"] for x in hfr),
                                         load_s=statistics.median(x["load_s"] for x in hfr),
                                         wall_s=statistics.median(x["wall_s"] for x in hfr))
            for f in args.formats:
                summary += f" {f} {r[f]['tok_s']:.1f} tok/s, load {r[f]['load_s']:.2f} s"
                if hf:
                    r[f]["vs_transformers"] = r[f]["tok_s"] / r["transformers"]["tok_s"]
                    summary += f" ({r[f]['vs_transformers']:.2f}x)"
                summary += ";"
            if hf:
                summary += (f" transformers {r['transformers']['tok_s']:.1f} tok/s, "
                            f"load {r['transformers']['load_s']:.2f} s")
            print(summary.rstrip(";"), flush=True)
            wall = f"{name} batch {batch} whole process (start, load, generate; medians):"
            for f in args.formats:
                wall += f" {f} {r[f]['wall_s']:.2f} s"
                if hf:
                    wall += f" ({r['transformers']['wall_s'] / r[f]['wall_s']:.1f}x)"
                wall += ";"
            if hf:
                wall += f" transformers {r['transformers']['wall_s']:.2f} s"
            print(wall.rstrip(";"), flush=True)
            results[f"{name}/b{batch}"] = r
    if args.json:
        Path(args.json).write_text(json.dumps(dict(machine=machine(), threads=args.threads,
                                                   wait_policy=args.wait_policy, models=results),
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
