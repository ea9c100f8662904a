"""The Qwen3 chat template and the section boundaries of a templated trace."""
from shard_io import Example


def render(trace):
    """(text, char offset of <think>, char offset just after </think>)."""
    head = f"<|im_start|>system\n{trace.system}<|im_end|>\n" if trace.system else ""
    head += f"<|im_start|>user\n{trace.prompt}<|im_end|>\n<|im_start|>assistant\n"
    cot = f"<think>\n{trace.cot}\n</think>"
    return head + cot + f"\n\n{trace.answer}<|im_end|>\n", len(head), len(head) + len(cot)


def example(encoding, think_at, think_end):
    """Example with token boundaries from a tokenizers Encoding of rendered text.

    cot_begin is the token holding the first character of <think>, cot_end
    the index after the token holding the last character of </think>; with
    Qwen-style tokenizers both tags are single tokens, so </think> closes the CoT.
    """
    offsets = encoding.offsets
    cot_begin = next(i for i, (_, end) in enumerate(offsets) if end > think_at)
    cot_end = next((i for i, (start, _) in enumerate(offsets) if start >= think_end), len(offsets))
    return Example(list(encoding.ids), cot_begin, cot_end)
