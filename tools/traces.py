"""Reading reasoning traces from JSONL records of the common shapes.

Two shapes are understood:
- explicit fields: prompt/problem/question, reasoning/cot/thinking,
  answer/solution/response, optional system;
- chat records: messages (role/content) or conversations (from/value), an
  optional system turn or top-level system field, then one user turn and one
  assistant turn whose text holds the reasoning in <think>...</think> or
  <|begin_of_thought|>...<|end_of_thought|>, the answer after it (possibly
  inside <|begin_of_solution|>...<|end_of_solution|>).
"""
import json
from dataclasses import dataclass

PROMPT_KEYS = ("prompt", "problem", "question")
COT_KEYS = ("reasoning", "cot", "thinking")
ANSWER_KEYS = ("answer", "solution", "response")
REASONING_TAGS = (("<think>", "</think>"), ("<|begin_of_thought|>", "<|end_of_thought|>"))
SOLUTION_TAGS = ("<|begin_of_solution|>", "<|end_of_solution|>")
# Text of the chat template itself: inside a field it would shift the sections.
TEMPLATE_TAGS = ("<think>", "</think>", "<|im_start|>", "<|im_end|>", "<|endoftext|>")
ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}


@dataclass
class Trace:
    system: str  # "" when absent
    prompt: str
    cot: str
    answer: str


class Malformed(ValueError):
    """A record that cannot become a training example; the message says why."""


def _first(rec, keys):
    for k in keys:
        if isinstance(rec.get(k), str):
            return rec[k]
    return None


def _between(text, open_tag, close_tag, what):
    """(inside, after) of the first open_tag...close_tag in text, or None when absent."""
    i = text.find(open_tag)
    if i < 0:
        return None
    j = text.find(close_tag, i + len(open_tag))
    if j < 0:
        raise Malformed(f"unclosed {what} tag {open_tag}")
    return text[i + len(open_tag) : j], text[j + len(close_tag) :]


def split_reasoning(text):
    """(cot, answer) of an assistant turn."""
    for open_tag, close_tag in REASONING_TAGS:
        found = _between(text, open_tag, close_tag, "reasoning")
        if found is not None:
            cot, answer = found
            break
    else:
        if any(t in text for _, t in REASONING_TAGS):
            raise Malformed("closing reasoning tag without an opening one")
        raise Malformed("no reasoning (<think> or <|begin_of_thought|>) in the assistant turn")
    solution = _between(answer, *SOLUTION_TAGS, "solution")
    if solution is not None:
        answer = solution[0]
    elif SOLUTION_TAGS[1] in answer:
        raise Malformed("closing solution tag without an opening one")
    return cot, answer


def _turns(rec):
    """[(role, text)] of a chat record."""
    if isinstance(rec.get("messages"), list):
        msgs, role_key, text_key = rec["messages"], "role", "content"
    else:
        msgs, role_key, text_key = rec["conversations"], "from", "value"
    turns = []
    for m in msgs:
        if not isinstance(m, dict) or not isinstance(m.get(text_key), str) or m.get(role_key) not in ROLES:
            raise Malformed(f"chat turn without a known {role_key} and a string {text_key}")
        turns.append((ROLES[m[role_key]], m[text_key]))
    return turns


def _from_chat(rec):
    turns = _turns(rec)
    system = rec.get("system") if isinstance(rec.get("system"), str) else ""
    if turns and turns[0][0] == "system":
        system = turns.pop(0)[1]
    if [r for r, _ in turns] != ["user", "assistant"]:
        raise Malformed("chat record must hold one user turn then one assistant turn")
    cot, answer = split_reasoning(turns[1][1])
    return Trace(system, turns[0][1], cot, answer)


def _from_fields(rec):
    prompt, cot, answer = _first(rec, PROMPT_KEYS), _first(rec, COT_KEYS), _first(rec, ANSWER_KEYS)
    missing = [name for name, v in (("prompt", prompt), ("reasoning", cot), ("answer", answer)) if v is None]
    if missing:
        raise Malformed("missing field(s): " + ", ".join(missing))
    system = rec.get("system") if isinstance(rec.get("system"), str) else ""
    wrapped = cot.strip()
    if wrapped.startswith("<think>") and wrapped.endswith("</think>"):  # reasoning stored with its tags
        cot = wrapped[len("<think>") : -len("</think>")]
    return Trace(system, prompt, cot, answer)


def parse_line(raw):
    """A Trace from one raw JSONL line (bytes), stripped; raises Malformed."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Malformed(f"invalid UTF-8 at byte {e.start}") from None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise Malformed(f"bad JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(rec, dict):
        raise Malformed("record is not a JSON object")
    is_chat = isinstance(rec.get("messages"), list) or isinstance(rec.get("conversations"), list)
    t = _from_chat(rec) if is_chat else _from_fields(rec)
    t = Trace(t.system.strip(), t.prompt.strip(), t.cot.strip(), t.answer.strip())
    for name in ("system", "prompt", "cot", "answer"):
        text = getattr(t, name)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise Malformed(f"invalid UTF-8 (unpaired surrogate escape) in {name}") from None
        tag = next((tag for tag in TEMPLATE_TAGS if tag in text), None)
        if tag:
            raise Malformed(f"{name} contains the template tag {tag}")
    if not t.prompt:
        raise Malformed("empty prompt")
    if not t.cot:
        raise Malformed("empty CoT")
    if not t.answer:
        raise Malformed("empty answer")
    return t
