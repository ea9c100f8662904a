#!/usr/bin/env python3
"""essence's logits against a PyTorch forward of the same fixture models.

For each fixture of tests/fixtures, runs the saved `transformers` model on its
packed batch (each document alone, positions from 0) on --device in --dtype,
and compares three logits arrays over the batch, as max|a - b| / max|ref|:
  torch   -- this forward against the fp32 reference stored in io.safetensors
  essence -- essence's logits (test_cuda_fixtures DEVICE DUMP-DIR wrote them)
             against the same reference
  cross   -- essence against this forward
essence passes when its error is within --tol, or within 4x what torch's own
forward in the same dtype makes: a bf16 engine can do no better than bf16.

Exit status 0 passed, 1 failed, 77 skipped (no torch/transformers, or no GPU).
    python3 tests/gpu/torch_parity.py --dump DIR [--device cuda --dtype bfloat16]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

CASES = ["qwen3_tied", "qwen3_untied", "qwen2", "llama", "gpt2"]


def rel(a, b):
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dump", required=True, help="folder of <case>.logits.f32 from test_cuda_fixtures")
    p.add_argument("--fixtures", default="tests/fixtures")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--tol", type=float, default=3e-2)
    args = p.parse_args(argv)
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        print(f"torch_parity: skipped, needs torch and transformers ({e})")
        return 77
    if args.device == "cuda" and not torch.cuda.is_available():
        print("torch_parity: skipped, torch sees no CUDA device")
        return 77
    dtype = getattr(torch, args.dtype)
    print(f"logits vs transformers on {args.device} in {args.dtype} (rel err; tol {args.tol:g} or 4x torch's)")
    print(f"  {'case':<13} {'torch':>9} {'essence':>9} {'cross':>9}")
    failed = 0
    for case in CASES:
        d = Path(args.fixtures) / case
        io = load_file(str(d / "io.safetensors"))
        dump = Path(args.dump) / f"{case}.logits.f32"
        ref = io["logits"].astype(np.float32)
        if not dump.exists():
            print(f"  {case:<13} missing {dump}")
            failed += 1
            continue
        ess = np.fromfile(dump, dtype=np.float32)
        if ess.size != ref.size:
            print(f"  {case:<13} {dump} holds {ess.size} values, expected {ref.size}")
            failed += 1
            continue
        ess = ess.reshape(ref.shape)
        model = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype, attn_implementation="sdpa")
        model.to(args.device).eval()
        tokens = torch.as_tensor(io["tokens"].astype(np.int64))
        cu = io["cu_seqlens"].astype(np.int64)
        parts = []
        with torch.no_grad():
            for a, b in zip(cu[:-1], cu[1:]):
                x = tokens[a:b][None].to(args.device)
                parts.append(model(input_ids=x).logits[0].float().cpu().numpy())
        mine = np.concatenate(parts).reshape(ref.shape)
        e_torch, e_ess, e_cross = rel(mine, ref), rel(ess, ref), rel(ess, mine)
        ok = e_ess <= max(args.tol, 4 * e_torch)
        failed += not ok
        print(f"  {case:<13} {e_torch:9.2e} {e_ess:9.2e} {e_cross:9.2e} {'ok' if ok else 'FAIL'}")
    print(f"torch_parity: {len(CASES) - failed} of {len(CASES)} cases ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
