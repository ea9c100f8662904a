#!/usr/bin/env python3
"""Writes the Hugging Face reference fixtures under tests/fixtures/<case>/.

Each case is a tiny randomly initialised `transformers` model (float32, eager
attention) saved with save_pretrained (config.json + model.safetensors), and an
io.safetensors holding one packed batch of three documents with its reference
logits, loss and the gradient of every parameter (Hugging Face names).

The packed reference is exact: each document runs on its own (batch of 1,
positions from 0), the logits are concatenated, and the loss is the sum of the
per-document cross-entropies over the total number of supervised tokens.

Then tests/fixtures/generate/<case>.json holds greedy continuations that
`transformers` generate() makes from each saved model for a few prompts: the
reference for `essence generate`. --generate-only rewrites just those.

New cases go at the end of cases(): the models are drawn in order from one
seeded generator, so the earlier fixtures come out byte-identical.

Needs torch and transformers; run once by hand (never by tests):
    python3 tools/make_fixtures.py [--out tests/fixtures] [--generate-only]
"""
import argparse
import json
import pathlib

import torch
from safetensors.torch import save_file
from transformers import (GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

SEED = 1234
DOC_LENS = (13, 7, 11)  # three documents of different lengths, packed: N = 31
IGNORE = -100

COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              rms_norm_eps=1e-6, initializer_range=0.1, rope_theta=10000.0)


def cases():
    """(name, model class, config) for every fixture."""
    return [
        # head_dim 16 != hidden / heads = 8, so q/o shapes differ from (C, C)
        ("qwen3_tied", Qwen3ForCausalLM,
         Qwen3Config(**COMMON, head_dim=16, tie_word_embeddings=True)),
        ("qwen3_untied", Qwen3ForCausalLM,
         Qwen3Config(**COMMON, head_dim=8, tie_word_embeddings=False)),
        ("qwen2", Qwen2ForCausalLM, Qwen2Config(**COMMON, tie_word_embeddings=False)),
        # attention_bias puts biases on q, k, v and o
        ("llama", LlamaForCausalLM,
         LlamaConfig(**COMMON, attention_bias=True, mlp_bias=False, tie_word_embeddings=False)),
        ("gpt2", GPT2LMHeadModel,
         GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                    initializer_range=0.1, layer_norm_epsilon=1e-5,
                    activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                    attn_pdrop=0.0, bos_token_id=95, eos_token_id=95)),
        # Llama 3 rope scaling, tied as Llama 3.2: with head_dim 16 and an original
        # context of 64 the wavelengths 6.3 (kept), 20 and 63 (smoothed) and 199 on
        # (divided by 8) meet all three branches.
        ("llama3_rope", LlamaForCausalLM,
         LlamaConfig(**{**COMMON, "max_position_embeddings": 256}, head_dim=16,
                     tie_word_embeddings=True,
                     rope_parameters=dict(rope_type="llama3", rope_theta=COMMON["rope_theta"],
                                          factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                          original_max_position_embeddings=64))),
        ("llama_linear", LlamaForCausalLM,
         LlamaConfig(**COMMON, tie_word_embeddings=False,
                     rope_parameters=dict(rope_type="linear", rope_theta=COMMON["rope_theta"],
                                          factor=4.0))),
    ]


def perturb(model, gen):
    """Moves norm weights off 1 and biases off 0, so that a loader or kernel that
    ignores them fails the comparison."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))


def make_batch(vocab, gen):
    """tokens, position_ids, cu_seqlens and targets of the packed batch, as
    DataCollatorWithFlattening lays it out; the last token of each document
    predicts nothing."""
    docs = [torch.randint(0, vocab, (n,), generator=gen) for n in DOC_LENS]
    tokens = torch.cat(docs)
    pos = torch.cat([torch.arange(n) for n in DOC_LENS])
    cu = torch.tensor([0] + list(torch.cumsum(torch.tensor(DOC_LENS), 0)))
    targets = torch.cat([torch.cat([d[1:], torch.tensor([IGNORE])]) for d in docs])
    return docs, tokens, pos, cu, targets


def reference(model, docs, targets):
    """Concatenated per-document logits and the mean CE over supervised tokens,
    with every parameter's gradient from loss.backward()."""
    model.zero_grad(set_to_none=True)
    logits = []
    for d in docs:
        pos = torch.arange(d.numel()).unsqueeze(0)
        out = model(input_ids=d.unsqueeze(0), position_ids=pos)
        logits.append(out.logits[0])
    logits = torch.cat(logits)
    count = int((targets != IGNORE).sum())
    loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE,
                                             reduction="sum") / count
    loss.backward()
    return logits.detach(), loss.detach()


GEN_PROMPT_LENS = (6, 11, 1)
GEN_NEW_TOKENS = 20


def generation_fixture(name, cls, root):
    """Greedy continuations of a few prompts by the saved model of a case, with
    the smallest top-1/top-2 logit gap met on the way (how close a tie came)."""
    model = cls.from_pretrained(root / name, attn_implementation="eager").float().eval()
    gen = torch.Generator().manual_seed(SEED + 7 + sum(map(ord, name)))
    vocab = model.config.vocab_size
    prompts = [torch.randint(0, vocab, (n,), generator=gen) for n in GEN_PROMPT_LENS]
    # No end-of-sequence id anywhere: every continuation runs the full length
    # and no logits processor touches the eos logit.
    model.generation_config.eos_token_id = None
    cfg = GenerationConfig(do_sample=False, max_new_tokens=GEN_NEW_TOKENS, pad_token_id=0,
                           output_scores=True, return_dict_in_generate=True)
    tokens, gap = [], float("inf")
    with torch.no_grad():
        for p in prompts:
            # An explicit mask: else a prompt token equal to pad_token_id is masked out.
            ids = p.unsqueeze(0)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
            tokens.append(out.sequences[0, p.numel():].tolist())
            assert len(tokens[-1]) == GEN_NEW_TOKENS
            for sc in out.scores:
                top = torch.topk(sc[0].float(), 2).values
                gap = min(gap, float(top[0] - top[1]))
    return {"prompts": [p.tolist() for p in prompts], "max_new": GEN_NEW_TOKENS,
            "tokens": tokens, "min_top2_gap": gap}


def write_generation_fixtures(root):
    (root / "generate").mkdir(parents=True, exist_ok=True)
    for name, cls, _ in cases():
        fx = generation_fixture(name, cls, root)
        (root / "generate" / f"{name}.json").write_text(json.dumps(fx) + "\n")
        print(f"generate/{name}: min top-2 gap {fx['min_top2_gap']:.4g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/fixtures", help="fixture root folder")
    ap.add_argument("--generate-only", action="store_true",
                    help="only rewrite the greedy generation fixtures from saved models")
    args = ap.parse_args()
    if args.generate_only:
        write_generation_fixtures(pathlib.Path(args.out))
        return
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    for name, cls, cfg in cases():
        gen = torch.Generator().manual_seed(SEED + sum(map(ord, name)))
        cfg._attn_implementation = "eager"
        model = cls(cfg).float().eval()  # eval: no dropout; gradients still flow
        assert model.config._attn_implementation == "eager"
        perturb(model, gen)
        docs, tokens, pos, cu, targets = make_batch(cfg.vocab_size, gen)
        logits, loss = reference(model, docs, targets)

        out = pathlib.Path(args.out) / name
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        io = {
            "tokens": tokens.to(torch.int32),
            "position_ids": pos.to(torch.int32),
            "cu_seqlens": cu.to(torch.int32),
            "targets": targets.to(torch.int32),
            "logits": logits.float().contiguous(),
            "loss": loss.float().reshape(()),
        }
        for pname, p in model.named_parameters():
            io["grad." + pname] = p.grad.detach().float().contiguous()
        save_file(io, str(out / "io.safetensors"))
        print(f"{name}: N={tokens.numel()} loss={loss.item():.6f} "
              f"params={sum(p.numel() for p in model.parameters())}")
    write_generation_fixtures(pathlib.Path(args.out))


if __name__ == "__main__":
    main()
