#!/usr/bin/env python3
"""Writes the chat-template fixtures under tests/data/templates/<style>/.

Each style (qwen3: tools/templates/qwen3.jinja in tokenizer_config.json;
llama3 and deepseek_r1: the .jinja files beside the folders, the first as
chat_template.jinja) gets a tiny byte-level BPE tokenizer with its special
tokens, and expected.json: what transformers' apply_chat_template renders
and tokenizes for a set of conversations, and the training text each trace
of traces.jsonl must become (with its CoT section as text).

Needs transformers; run once by hand (never by tests):
    /tmp/tv/bin/python tools/make_template_fixtures.py
"""
import json
import pathlib
import shutil

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "templates"
STYLES = {
    "qwen3": dict(special=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
                  bos=None, eos="<|im_end|>", file=None),
    "llama3": dict(special=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                            "<|eot_id|>"], bos="<|begin_of_text|>", eos="<|eot_id|>", file="chat_template.jinja"),
    "deepseek_r1": dict(special=["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
                                 "<think>", "</think>"],
                        bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>", file=None),
}
SYSTEM = {"role": "system", "content": "You are a careful solver."}
USER = {"role": "user", "content": "What is 2 + 3? Answer in \\boxed{}; café ∑."}
CONVERSATIONS = [
    ([USER], True),
    ([SYSTEM, USER], True),
    ([USER, {"role": "assistant", "content": "So \\boxed{5}.", "reasoning_content": "2 + 3 = 5, check: 5 - 3 = 2."}],
     False),
    ([SYSTEM, USER, {"role": "assistant", "content": "<think>\n2 + 3 = 5\n</think>\n\nSo \\boxed{5}."}], False),
    ([USER, {"role": "assistant", "content": "<think>\nfirst turn\n</think>\n\nIt is 5."},
      {"role": "user", "content": "And 4 + 4?"},
      {"role": "assistant", "content": "<think>\n4 + 4 = 8\n</think>\n\n\\boxed{8}"}], False),
]
# The traces prep_data reads; cot is the reasoning as the dataset holds it.
TRACES = [
    {"prompt": USER["content"], "reasoning": "2 + 3 = 5, check: 5 - 3 = 2.", "answer": "So \\boxed{5}."},
    {"system": SYSTEM["content"], "messages": [USER, {"role": "assistant", "content": "<think>\n2 + 3 = 5\n</think>\n\n5"}]},
    {"conversations": [{"from": "user", "value": USER["content"]},
                       {"from": "assistant", "value": "<|begin_of_thought|>\n\n2 + 3 = 5\n\n<|end_of_thought|>\n\n"
                                                      "<|begin_of_solution|>\n\n\\boxed{5}\n\n<|end_of_solution|>"}]},
]


def tokenizer(special):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [json.dumps(c, ensure_ascii=False) for c, _ in CONVERSATIONS] + [json.dumps(TRACES, ensure_ascii=False)]
    tok.train_from_iterator(corpus * 4, trainer)
    return tok


def training_text(hf, style, rec):
    """(text, CoT text) that prep_data must make of a trace, from transformers' renderings."""
    head = ([SYSTEM] if "system" in rec else []) + [USER]
    if "conversations" in rec:
        cot, answer = "2 + 3 = 5", "\\boxed{5}"
        marked = rec["conversations"][1]["value"]
        cot_text = "<|begin_of_thought|>\n\n2 + 3 = 5\n\n<|end_of_thought|>"
    else:
        cot = rec.get("reasoning") or "2 + 3 = 5"
        answer = rec.get("answer") or "5"
        marked = f"<think>\n{cot}\n</think>\n\n{answer}"
        cot_text = f"<think>\n{cot}\n</think>"
    render = lambda msgs, gen=False: hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    if style == "qwen3":
        return render(head + [{"role": "assistant", "content": answer, "reasoning_content": cot}]), f"<think>\n{cot}\n</think>"
    if style == "llama3" or "conversations" in rec:  # the content as the dataset marks it
        return render(head + [{"role": "assistant", "content": marked}]), cot_text
    # deepseek_r1 drops the reasoning: the generation prompt continued as the model writes
    gen = render(head, True)
    return gen + f"{cot}\n</think>\n\n{answer}" + STYLES[style]["eos"], "<think>\n" + f"{cot}\n</think>"


def main():
    (OUT / "traces.jsonl").write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in TRACES),
                                      encoding="utf-8")
    for style, spec in STYLES.items():
        d = OUT / style
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        tokenizer(spec["special"]).save(str(d / "tokenizer.json"))
        template = (ROOT / "tools" / "templates" / "qwen3.jinja" if style == "qwen3" else OUT / f"{style}.jinja").read_text()
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": spec["eos"], "model_max_length": 4096}
        if spec["bos"]:
            cfg["bos_token"] = spec["bos"]
        if spec["file"]:
            (d / spec["file"]).write_text(template, encoding="utf-8")
        else:
            cfg["chat_template"] = template
        (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        hf = AutoTokenizer.from_pretrained(str(d))
        cases = []
        for msgs, gen in CONVERSATIONS:
            text = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            ids = hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen, return_dict=False)
            cases.append({"messages": msgs, "add_generation_prompt": gen, "text": text, "ids": list(ids)})
        traces = []
        for rec in TRACES:
            text, cot = training_text(hf, style, rec)
            traces.append({"text": text, "ids": hf(text, add_special_tokens=False)["input_ids"], "cot": cot})
        (d / "expected.json").write_text(json.dumps({"conversations": cases, "traces": traces}, indent=1,
                                                    ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {d}")


if __name__ == "__main__":
    main()
