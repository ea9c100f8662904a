"""A model directory's own chat template and the sections of a templated trace.

The template is the Jinja `chat_template` of tokenizer_config.json or the
file chat_template.jinja, rendered as transformers' apply_chat_template does
(same sandbox, options, globals and filters, the special tokens as
variables); a directory without one gets templates/qwen3.jinja.

A trace is rendered as a conversation [system], user, assistant; the CoT is
then found in the rendered text, from the reasoning tag that opens it to the
one that closes it. Templates differ in where they take the reasoning from,
so three renderings are tried in turn: the reasoning in reasoning_content
(Qwen3), in the content with the dataset's own markers (Llama-3: the
template shows the text as it is), and, for a template that drops the
reasoning of the final turn (DeepSeek-R1 distills), the generation prompt
continued as the model would: reasoning, closing tag, answer, end of turn.
"""
import json
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from shard_io import Example
from traces import REASONING_TAGS, SOLUTION_TAGS, Malformed

BUILTIN = Path(__file__).resolve().parent / "templates" / "qwen3.jinja"
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class TemplateError(ValueError):
    """A template that cannot be read or rendered; the message names it."""


class _Generation(Extension):
    """{% generation %}...{% endgeneration %} of transformers' templates: renders its body."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=dict,
                       namespace=jinja2.utils.Namespace)
    return env


def _source(model_dir):
    """(template text, where it came from), or (None, None)."""
    d = Path(model_dir)
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text(encoding="utf-8"), d / "chat_template.jinja"
    cfg_path = d / "tokenizer_config.json"
    if not cfg_path.is_file():
        return None, None
    cfg = _config(cfg_path)
    tpl = cfg.get("chat_template")
    if isinstance(tpl, list):  # named templates: the default one
        tpl = next((t.get("template") for t in tpl if isinstance(t, dict) and t.get("name") == "default"), None)
    if tpl is not None and not isinstance(tpl, str):
        raise TemplateError(f"{cfg_path}: chat_template is not a string")
    return tpl, cfg_path


def _config(path):
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise TemplateError(f"{path}: not JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise TemplateError(f"{path}: not a JSON object")
    return cfg


def _special_tokens(model_dir):
    path = Path(model_dir) / "tokenizer_config.json"
    cfg = _config(path) if path.is_file() else {}
    out = {}
    for name in SPECIAL_TOKENS:
        v = cfg.get(name)
        v = v.get("content") if isinstance(v, dict) else v
        if isinstance(v, str):
            out[name] = v
    return out


class ChatTemplate:
    def __init__(self, text, where, variables):
        self.where = where
        self.variables = variables
        try:
            self._template = _environment().from_string(text)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"{where}: bad Jinja at line {e.lineno}: {e.message}") from None

    @classmethod
    def load(cls, model_dir):
        """(ChatTemplate, note): note says when the built-in template stands in."""
        text, where = _source(model_dir)
        note = None
        if text is None:
            text, where = BUILTIN.read_text(encoding="utf-8"), BUILTIN
            note = f"{model_dir}: no chat template (tokenizer_config.json or chat_template.jinja); using the built-in Qwen3 one"
        return cls(text, where, _special_tokens(model_dir)), note

    def render(self, messages, add_generation_prompt=False):
        """apply_chat_template(messages, tokenize=False, add_generation_prompt=...)."""
        msgs = []
        for m in messages:
            m = {k: v for k, v in m.items() if v is not None}
            if "reasoning_content" in m:  # transformers also passes it as "thinking"
                m = {"thinking": m["reasoning_content"], **m}
            msgs.append(m)
        try:
            return self._template.render(messages=msgs, tools=None, documents=None,
                                         add_generation_prompt=add_generation_prompt, **self.variables)
        except jinja2.TemplateError as e:
            raise Malformed(f"the chat template ({self.where}) refused the record: {e}") from None

    def prompt(self, system, prompt):
        """The text up to where the model writes: the generation prompt."""
        return self.render(_prompt_messages(system, prompt), add_generation_prompt=True)

    def trace(self, t):
        """(text, char offset where the CoT opens, char offset just after it closes) of Trace t."""
        head = _prompt_messages(t.system, t.prompt)
        gen = self.render(head, add_generation_prompt=True)
        fielded = self.render(head + [{"role": "assistant", "content": t.answer, "reasoning_content": t.cot}])
        for text in (fielded, self.render(head + [{"role": "assistant", "content": _marked(t)}])):
            span = _cot_span(text, gen, t.cot)
            if span:
                return (text, *span)
        # The template drops the final reasoning: continue the generation prompt as the model writes.
        at = fielded.rfind(t.answer)
        if at < 0:
            raise Malformed(f"the chat template ({self.where}) drops the answer")
        opened = any(gen.rstrip().endswith(o) for o, _ in REASONING_TAGS)
        start = gen.rfind("<think>") if opened else len(gen)
        text = gen + ("" if opened else "<think>\n") + t.cot + "\n</think>"
        end = len(text)
        return text + "\n\n" + t.answer + fielded[at + len(t.answer):], start, end


def _prompt_messages(system, prompt):
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def _marked(t):
    """The assistant text as the dataset wrote it, markers included."""
    if t.markers == "thought":
        o, c = REASONING_TAGS[1]
        so, sc = SOLUTION_TAGS
        return f"{o}\n\n{t.cot}\n\n{c}\n\n{so}\n\n{t.answer}\n\n{sc}"
    return f"<think>\n{t.cot}\n</think>\n\n{t.answer}"


def _cot_span(text, gen, cot):
    """(start, end) of the CoT in text with its reasoning tags, or None when text lacks it."""
    base = 0
    while base < min(len(gen), len(text)) and gen[base] == text[base]:
        base += 1
    at = text.find(cot, base)
    if at < 0:
        return None
    # The common prefix may end inside the opening tag ("<" of both "<think>" and "<|begin_of_thought|>").
    lo = max(0, base - max(len(o) for o, _ in REASONING_TAGS))
    opens = [text.rfind(o, lo, at) for o, _ in REASONING_TAGS]
    start = max(opens) if max(opens) >= 0 else at
    end = at + len(cot)
    after = len(text[end:]) - len(text[end:].lstrip())
    close = next((c for _, c in REASONING_TAGS if text.startswith(c, end + after)), None)
    return start, (end + after + len(close) if close else end)


def example(encoding, cot_start, cot_end):
    """Example with token boundaries from a tokenizers Encoding of rendered text:
    cot_begin is the token holding the CoT's first character (its opening tag),
    cot_end the index after the token holding its last (the closing tag)."""
    offsets = encoding.offsets
    cot_begin = next(i for i, (_, end) in enumerate(offsets) if end > cot_start)
    cot_stop = next((i for i, (start, _) in enumerate(offsets) if start >= cot_end), len(offsets))
    return Example(list(encoding.ids), cot_begin, cot_stop)
