"""Reading reasoning traces from records of the common shapes.

Two shapes are understood:
- explicit fields: prompt/problem/question, reasoning/cot/thinking/
  reasoning_content/deepseek_reasoning, answer/solution/response/
  deepseek_solution, optional system;
- chat records: messages (role/content) or conversations (from/value), an
  optional system turn or top-level system field, then one user turn and one
  assistant turn whose reasoning is its reasoning_content field, or in its
  text inside <think>...</think> or <|begin_of_thought|>...<|end_of_thought|>,
  the answer after it (possibly inside <|begin_of_solution|>...<|end_of_solution|>).
A column map ({"prompt": "question", ...}) names a dataset's own columns.
"""
import json
from dataclasses import dataclass

PROMPT_KEYS = ("prompt", "problem", "question")
COT_KEYS = ("reasoning", "cot", "thinking", "reasoning_content", "deepseek_reasoning")
ANSWER_KEYS = ("answer", "solution", "response", "deepseek_solution")
REASONING_TAGS = (("<think>", "</think>"), ("<|begin_of_thought|>", "<|end_of_thought|>"))
SOLUTION_TAGS = ("<|begin_of_solution|>", "<|end_of_solution|>")
# Text of the chat template itself: inside a field it would shift the sections.
TEMPLATE_TAGS = ("<think>", "</think>", "<|begin_of_thought|>", "<|end_of_thought|>", "<|im_start|>", "<|im_end|>",
                 "<|endoftext|>")
COLUMNS = ("system", "prompt", "reasoning", "answer", "messages", "conversations")  # names --columns can map
ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}


@dataclass
class Trace:
    system: str  # "" when absent
    prompt: str
    cot: str
    answer: str
    markers: str = "think"  # the dataset's: "think" (<think>) or "thought" (<|begin_of_thought|>, solution tags)


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
    """(cot, answer, markers) of an assistant turn."""
    for (open_tag, close_tag), markers in zip(REASONING_TAGS, ("think", "thought")):
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
    return cot, answer, markers


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
        reasoning = m.get("reasoning_content")
        turns.append((ROLES[m[role_key]], m[text_key], reasoning if isinstance(reasoning, str) else None))
    return turns


def _from_chat(rec):
    turns = _turns(rec)
    system = rec.get("system") if isinstance(rec.get("system"), str) else ""
    if turns and turns[0][0] == "system":
        system = turns.pop(0)[1]
    if [t[0] for t in turns] != ["user", "assistant"]:
        raise Malformed("chat record must hold one user turn then one assistant turn")
    _, text, reasoning = turns[1]
    if reasoning is not None:  # the reasoning in its own field, the answer in content
        return Trace(system, turns[0][1], reasoning, text)
    return Trace(system, turns[0][1], *split_reasoning(text))


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


def parse_line(raw, columns=None):
    """A Trace from one raw JSONL line (bytes), stripped; raises Malformed."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Malformed(f"invalid UTF-8 at byte {e.start}") from None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise Malformed(f"bad JSON: {e.msg} at column {e.colno}") from None
    return parse_record(rec, columns)


def parse_record(rec, columns=None):
    """A Trace from one record (a dict), stripped; raises Malformed.
    columns maps names of COLUMNS to the record's own column names."""
    if not isinstance(rec, dict):
        raise Malformed("record is not a JSON object")
    if columns:
        missing = [col for col in columns.values() if col not in rec]
        if missing:
            raise Malformed("no column " + ", ".join(missing))
        rec = {**rec, **{name: rec[col] for name, col in columns.items()}}
    is_chat = isinstance(rec.get("messages"), list) or isinstance(rec.get("conversations"), list)
    t = _from_chat(rec) if is_chat else _from_fields(rec)
    t = Trace(t.system.strip(), t.prompt.strip(), t.cot.strip(), t.answer.strip(), t.markers)
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
