"""tools/chat_template.py against transformers' apply_chat_template (fixtures of
tools/make_template_fixtures.py), and the CoT sections prep_data finds with each template."""
import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

import prep_data
import shard_io
from chat_template import ChatTemplate
from traces import parse_record

TEMPLATES = Path(__file__).resolve().parents[1] / "data" / "templates"
STYLES = ("qwen3", "llama3", "deepseek_r1")


def expected(style):
    return json.loads((TEMPLATES / style / "expected.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("style", STYLES)
def test_render_matches_transformers_byte_for_byte(style):
    template, note = ChatTemplate.load(TEMPLATES / style)
    assert note is None
    tok = Tokenizer.from_file(str(TEMPLATES / style / "tokenizer.json"))
    for case in expected(style)["conversations"]:
        text = template.render(case["messages"], case["add_generation_prompt"])
        assert text == case["text"]
        assert tok.encode(text, add_special_tokens=False).ids == case["ids"]


@pytest.mark.parametrize("style", STYLES)
def test_trace_text_and_sections(style, tmp_path):
    template, _ = ChatTemplate.load(TEMPLATES / style)
    lines = (TEMPLATES / "traces.jsonl").read_text(encoding="utf-8").splitlines()
    for line, want in zip(lines, expected(style)["traces"]):
        text, start, end = template.trace(parse_record(json.loads(line)))
        assert text == want["text"]
        assert text[start:end] == want["cot"]
    out = tmp_path / "t.bin"
    prep_data.main(["--model", str(TEMPLATES / style), "--out", str(out), str(TEMPLATES / "traces.jsonl")])
    tok = Tokenizer.from_file(str(TEMPLATES / style / "tokenizer.json"))
    for e, want in zip(shard_io.read(out)[1], expected(style)["traces"]):
        assert e.tokens == want["ids"]
        assert tok.decode(e.tokens[e.cot_begin:e.cot_end], skip_special_tokens=False) == want["cot"]


def test_directory_without_template_says_so_and_uses_qwen3(tmp_path, capsys):
    (tmp_path / "tokenizer.json").write_bytes((TEMPLATES / "qwen3" / "tokenizer.json").read_bytes())
    src = TEMPLATES / "traces.jsonl"
    prep_data.main(["--model", str(tmp_path), "--out", str(tmp_path / "a.bin"), str(src)])
    assert "no chat template" in capsys.readouterr().out  # in the summary: stderr is for the one error line
    prep_data.main(["--model", str(TEMPLATES / "qwen3"), "--out", str(tmp_path / "b.bin"), str(src)])
    assert shard_io.read(tmp_path / "a.bin")[1] == shard_io.read(tmp_path / "b.bin")[1]


def test_bad_template_is_one_line(tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((TEMPLATES / "qwen3" / "tokenizer.json").read_bytes())
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}")
    with pytest.raises(SystemExit, match=r"chat_template.jinja: bad Jinja at line 1"):
        prep_data.main(["--model", str(tmp_path), "--out", str(tmp_path / "a.bin"), str(TEMPLATES / "traces.jsonl")])
    assert not (tmp_path / "a.bin").exists()
