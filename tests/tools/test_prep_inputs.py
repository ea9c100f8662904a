"""prep_data's inputs: hub folders of Parquet (OpenThoughts, Bespoke-Stratos,
OpenR1 layouts), JSON arrays, save_to_disk Arrow folders, --columns, bad files."""
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

import prep_data
import shard_io

QWEN3 = Path(__file__).resolve().parents[1] / "data" / "templates" / "qwen3"
PROMPT, COT, ANSWER = "What is 2 + 3?", "2 + 3 = 5, so five.", "\\boxed{5}"
THOUGHT = (f"<|begin_of_thought|>\n\n{COT}\n\n<|end_of_thought|>\n\n"
           f"<|begin_of_solution|>\n\n{ANSWER}\n\n<|end_of_solution|>")
# OpenThoughts-114k and Bespoke-Stratos-17k: system + conversations (from/value).
SHAREGPT = {"system": "Think first.", "conversations": [{"from": "user", "value": PROMPT},
                                                         {"from": "assistant", "value": THOUGHT}]}
# OpenR1-Math: messages with <think>, beside problem/solution/answer columns.
OPENR1 = {"problem": PROMPT, "solution": "long", "answer": "5",
          "messages": [{"role": "user", "content": PROMPT},
                       {"role": "assistant", "content": f"<think>\n{COT}\n</think>\n\n{ANSWER}"}]}
REASONING_FIELD = {"messages": [{"role": "user", "content": PROMPT},
                                {"role": "assistant", "content": ANSWER, "reasoning_content": COT}]}
# OpenThoughts' metadata layout: named by --columns.
METADATA = {"problem": PROMPT, "deepseek_reasoning": COT, "deepseek_solution": ANSWER, "ground_truth_solution": "5"}


def sections(path):
    tok = Tokenizer.from_file(str(QWEN3 / "tokenizer.json"))
    dec = lambda ids: tok.decode(ids, skip_special_tokens=False)
    return [(dec(e.tokens[:e.cot_begin]), dec(e.tokens[e.cot_begin:e.cot_end]), dec(e.tokens[e.cot_end:]))
            for e in shard_io.read(path)[1]]


def want(system=""):
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return (head + f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n", f"<think>\n{COT}\n</think>",
            f"\n\n{ANSWER}<|im_end|>\n")


def hub_folder(root, records, shards=2):
    """records laid out as the hub does: data/train-0000i-of-0000N.parquet, plus a test split."""
    (root / "data").mkdir(parents=True)
    per = -(-len(records) // shards)
    for i in range(shards):
        pq.write_table(pa.Table.from_pylist(records[i * per:(i + 1) * per]),
                       root / "data" / f"train-{i:05d}-of-{shards:05d}.parquet", row_group_size=2)
    pq.write_table(pa.Table.from_pylist(records[:1]), root / "data" / "test-00000-of-00001.parquet")
    (root / "README.md").write_text("dataset card")
    return root


def prep(tmp_path, *args):
    out = tmp_path / "out.bin"
    prep_data.main(["--model", str(QWEN3), "--out", str(out), *map(str, args)])
    return out


@pytest.mark.parametrize("rec,system", [(SHAREGPT, "Think first."), (OPENR1, ""), (REASONING_FIELD, "")])
def test_hub_parquet_folder_layouts(tmp_path, rec, system):
    out = prep(tmp_path, hub_folder(tmp_path / "ds", [rec] * 5))
    assert sections(out) == [want(system)] * 5  # the train split only: 5, not 6


def test_columns_name_a_datasets_own_fields(tmp_path, capsys):
    ds = hub_folder(tmp_path / "ds", [METADATA] * 3, shards=1)
    out = prep(tmp_path, ds, "--columns", "reasoning=deepseek_reasoning,answer=deepseek_solution")
    assert sections(out) == [want()] * 3
    with pytest.raises(SystemExit, match="no example left"):
        prep(tmp_path, ds, "--columns", "reasoning=nope")
    assert "3  no column nope" in capsys.readouterr().out


def test_missing_column_is_malformed_and_counted(tmp_path, capsys):
    ds = hub_folder(tmp_path / "ds", [METADATA, dict(METADATA, deepseek_reasoning=None)], shards=1)
    out = prep(tmp_path, ds, "--columns", "reasoning=deepseek_reasoning,answer=deepseek_solution")
    assert len(sections(out)) == 1
    assert "skipped 1 malformed" in capsys.readouterr().out


def test_json_array_and_save_to_disk_arrow(tmp_path):
    arr = tmp_path / "a.json"
    arr.write_text(json.dumps([SHAREGPT, METADATA | {"reasoning": COT, "answer": ANSWER}, "x"], indent=2))
    saved = tmp_path / "saved"
    saved.mkdir()
    table = pa.Table.from_pylist([OPENR1] * 2)
    with pa.ipc.new_stream(saved / "data-00000-of-00001.arrow", table.schema) as w:
        w.write_table(table)
    (saved / "state.json").write_text("{}")
    (saved / "dataset_info.json").write_text("{}")
    assert sections(prep(tmp_path, arr, saved)) == [want("Think first."), want(), want(), want()]


def test_json_array_read_in_pieces(tmp_path, monkeypatch):
    import records
    monkeypatch.setattr(records, "JSON_CHUNK", 7)  # elements straddle every read
    arr = tmp_path / "a.json"
    arr.write_text(json.dumps([SHAREGPT] * 3))
    assert sections(prep(tmp_path, arr)) == [want("Think first.")] * 3


@pytest.mark.parametrize("name,content,problem", [
    ("bad.parquet", b"PAR1 not really", "cannot read as parquet"),
    ("bad.json", b'[{"prompt": "p"}, {"prompt": ', "element 2: bad JSON"),
    ("empty", None, "no .jsonl, .json, .parquet or .arrow files"),
])
def test_unreadable_input_is_one_line_and_writes_nothing(tmp_path, name, content, problem):
    p = tmp_path / name
    p.mkdir() if content is None else p.write_bytes(content)
    with pytest.raises(SystemExit, match=f"prep_data: {p}.*{problem}"):
        prep(tmp_path, p)
    assert not list(tmp_path.glob("out*"))
