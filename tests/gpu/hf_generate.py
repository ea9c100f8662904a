#!/usr/bin/env python3
"""A student trained by essence, loaded in `transformers`, greedy-decodes as essence does.

Prompts are the prompt parts (up to <think>) of the first --n documents of a
shard. `essence generate --device DEVICE` continues each greedily for
--max-new tokens; then the saved model is loaded with
AutoModelForCausalLM.from_pretrained in float32 and run teacher-forced over
each prompt + essence's continuation. At every generated position essence's
token must be transformers' argmax, or within --margin (logits) of its
maximum: a bf16 engine may break a near-tie the other way, and from that
point on the sequences legitimately differ. Also reports how many
continuations match transformers' own generate() exactly.

Exit status 0 passed, 1 failed, 77 skipped (no torch/transformers, or no GPU).
    python3 tests/gpu/hf_generate.py --essence build/essence --model RUN/final --shard val.bin
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import shard_io  # noqa: E402
import torch_env  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--essence", required=True)
    p.add_argument("--model", required=True, help="a Hugging Face folder written by essence train")
    p.add_argument("--shard", required=True)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new", type=int, default=48)
    p.add_argument("--margin", type=float, default=0.05)
    args = p.parse_args(argv)
    libs = torch_env.load("hf_generate", args.device)
    if libs is None:
        return 77
    torch, AutoModelForCausalLM = libs

    _, examples = shard_io.read(args.shard)
    prompts = [e.tokens[: e.cot_begin + 1] for e in examples[: args.n]]
    with tempfile.TemporaryDirectory() as tmp:
        fin, fout = Path(tmp) / "prompts.jsonl", Path(tmp) / "samples.jsonl"
        fin.write_text("".join(json.dumps({"id": i, "prompt_ids": ids}) + "\n" for i, ids in enumerate(prompts)))
        # No stop ids beyond the config's eos: a fixed length compares more tokens.
        cmd = [args.essence, "generate", "--model", args.model, "--in", str(fin), "--out", str(fout),
               "--max-new", str(args.max_new), "--device", args.device]
        r = subprocess.run(cmd)
        if r.returncode:
            print(f"hf_generate: essence generate exited {r.returncode}")
            return 1
        samples = {s["id"]: s["ids"] for s in map(json.loads, fout.read_text().splitlines())}

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(args.device).eval()
    bad = exact = compared = 0
    worst = 0.0
    for i, prompt in enumerate(prompts):
        gen = samples[i]
        ids = torch.tensor([prompt + gen], device=args.device)
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(gen)].float()
            ref = model.generate(torch.tensor([prompt], device=args.device), max_new_tokens=len(gen),
                                 do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
        picked = logits.gather(1, torch.tensor(gen, device=args.device)[:, None])[:, 0]
        gap = (logits.max(1).values - picked).cpu()  # 0 where essence took the argmax
        compared += len(gen)
        worst = max(worst, float(gap.max()))
        miss = int((gap > args.margin).sum())
        bad += miss
        exact += ref == gen
        first = next((k for k, (a, b) in enumerate(zip(ref, gen)) if a != b), None)
        print(f"prompt {i}: {len(prompt)} + {len(gen)} tokens; largest logit gap {float(gap.max()):.4f}; "
              f"generate() {'matches' if ref == gen else f'differs from token {first}'}")
    ok = bad == 0 and compared > 0
    print(f"{exact} of {len(prompts)} continuations identical to transformers generate(); "
          f"{compared} tokens, {bad} off transformers' argmax by more than {args.margin} "
          f"(largest gap {worst:.4f}): {'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
