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
Gradients likewise: where test_cuda_fixtures wrote <case>.grad_err.txt, torch
runs the fixture's loss backward in --dtype, and each parameter's gradient
error of essence must be within --grad-tol or 4x torch's for that parameter.

Exit status 0 passed, 1 failed, 77 skipped (no torch/transformers, or no GPU).
    python3 tests/gpu/torch_parity.py --dump DIR [--device cuda --dtype bfloat16]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_env  # noqa: E402

CASES = ["qwen3_tied", "qwen3_untied", "qwen2", "llama", "gpt2", "llama3_rope", "llama_linear"]


def rel(a, b):
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def torch_grad_errors(torch, model, io, device):
    """Per-parameter rel error of a backward in the model's dtype against the
    fixture's fp32 gradients; the loss is the fixture's (mean CE over the
    supervised tokens, each document alone), taken in fp32 from the logits."""
    tokens = torch.as_tensor(io["tokens"].astype(np.int64), device=device)
    targets = torch.as_tensor(io["targets"].astype(np.int64), device=device)
    cu = io["cu_seqlens"].astype(np.int64)
    model.zero_grad(set_to_none=True)
    logits = torch.cat([model(input_ids=tokens[a:b][None]).logits[0] for a, b in zip(cu[:-1], cu[1:])])
    count = int((targets >= 0).sum())
    loss = torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum") / count
    loss.backward()
    refs = {n: io["grad." + n] for n, _ in model.named_parameters() if "grad." + n in io}
    floor = 1e-2 * max(float(np.abs(r).max()) for r in refs.values())
    errs = {}
    for n, p in model.named_parameters():
        if n in refs and p.grad is not None:
            g, r = p.grad.float().cpu().numpy(), refs[n]
            errs[n] = float(np.abs(g - r).max() / max(np.abs(r).max(), floor)) if np.isfinite(g).all() else float("inf")
    return errs


def check_grads(torch, model, io, dump, device, tol):
    """(worst torch error, worst essence error, names out of tolerance) or None without a dump."""
    if not dump.exists():
        return None
    ess = {}
    for line in dump.read_text().splitlines():
        name, err = line.split()
        ess[name] = float(err)
    mine = torch_grad_errors(torch, model, io, device)
    bad = [n for n in ess if n not in mine or not ess[n] <= max(tol, 4 * mine[n])]
    return max(mine.values()), max(ess.values()), bad


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dump", required=True, help="folder of <case>.logits.f32 from test_cuda_fixtures")
    p.add_argument("--fixtures", default="tests/fixtures")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--tol", type=float, default=3e-2)
    p.add_argument("--grad-tol", type=float, default=5e-2)
    args = p.parse_args(argv)
    libs = torch_env.load("torch_parity", args.device)
    if libs is None:
        return 77
    torch, AutoModelForCausalLM = libs
    dtype = getattr(torch, args.dtype)
    print(f"logits vs transformers on {args.device} in {args.dtype} (rel err; tol {args.tol:g} or 4x torch's;"
          f" gradients {args.grad_tol:g} or 4x torch's, each parameter)")
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
        grads = check_grads(torch, model, io, Path(args.dump) / f"{case}.grad_err.txt", args.device, args.grad_tol)
        note = ""
        if grads:
            g_torch, g_ess, bad = grads
            ok = ok and not bad
            note = f"  grads: torch {g_torch:.2e} essence {g_ess:.2e}" + (f", out of tolerance: {' '.join(bad)}" if bad else "")
        failed += not ok
        print(f"  {case:<13} {e_torch:9.2e} {e_ess:9.2e} {e_cross:9.2e} {'ok' if ok else 'FAIL'}{note}")
    print(f"torch_parity: {len(CASES) - failed} of {len(CASES)} cases ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
