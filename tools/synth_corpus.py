#!/usr/bin/env python3
"""Deterministic synthetic reasoning corpus: math word problems.

Each record holds a prompt, step-by-step reasoning in which every
computation is written "a op b = c", an answer ending in \\boxed{N}, and for
checking: the level, the integer value N and an arithmetic expression that
evaluates to it. Levels 1..5 grow from one person and two events (CoT of
about 50 tokens) to five people, many events and a second checking pass
(about 1500 tokens). Splits never share a prompt.

--style chain makes reasoning-trace analogs for the truncation experiments
(perf/science): a short prompt, a chain of small additions and subtractions
("Start at 7: +5 -3 +8 +2."), and a CoT at least 5x the prompt whose answer
is fixed in its first half: the computation, then a check of every step and a
restatement. With --late the CoT first restates the problem and plans, and the
decisive computation comes in its last part: where truncation hurts.

  python3 tools/synth_corpus.py --out data/synth --seed 0
  python3 tools/synth_corpus.py --out data/chain --style chain [--late]
"""
import argparse
import json
import random
from pathlib import Path

import cli_args
import out_file

NAMES = ["Mia", "Noah", "Ava", "Liam", "Zoe", "Omar", "Lena", "Ravi", "Iris", "Hugo", "Nina", "Kai", "Sara", "Tom",
         "Yuki", "Elif", "Jon", "Priya", "Max", "Chloe"]
ITEMS = ["apples", "marbles", "stickers", "coins", "books", "pencils", "cookies", "cards", "stamps", "shells",
         "beads", "tickets"]
FRIENDS = ["a neighbour", "a classmate", "a cousin", "the teacher", "a friend", "the library", "a younger sibling"]
# (people, events per person, second checking pass)
LEVELS = {1: (1, (1, 2), False), 2: (1, (3, 5), False), 3: (2, (3, 5), False), 4: (3, (5, 7), True),
          5: (5, (7, 9), True)}


class Person:
    def __init__(self, name, start):
        self.name, self.start, self.count, self.expr = name, start, start, str(start)
        self.story, self.steps, self.checks = [], [], []


def _event(rng, p, item):
    """Applies one random event to p, recording story, reasoning and checks."""
    q, n = p.count, p.name
    kinds = ["find", "buy", "give", "sell"]
    if q < 400:
        kinds.append("double")
    divisors = [d for d in range(2, 10) if q % d == 0 and q // d >= 2]
    if divisors:
        kinds.append("share")
    kind = rng.choice(kinds)
    if kind == "find":
        k = rng.randint(2, 40)
        p.story.append(f"{n} finds {k} more {item}.")
        p.steps.append(f"{n} finds {k} more, so {n} now has {q} + {k} = {q + k} {item}.")
        p.checks.append(f"{q} + {k} = {q + k}")
        p.count, p.expr = q + k, f"({p.expr} + {k})"
    elif kind == "buy":
        k, m = rng.randint(2, 9), rng.randint(2, 12)
        p.story.append(f"{n} buys {k} bags with {m} {item} in each.")
        p.steps.append(f"The bags hold {k} * {m} = {k * m} {item}. Adding them, {n} has {q} + {k * m} = {q + k * m} {item}.")
        p.checks.append(f"{k} * {m} = {k * m}, {q} + {k * m} = {q + k * m}")
        p.count, p.expr = q + k * m, f"({p.expr} + ({k} * {m}))"
    elif kind == "give" and q > 2:
        k = rng.randint(1, q - 1)
        p.story.append(f"{n} gives {k} {item} to {rng.choice(FRIENDS)}.")
        p.steps.append(f"Giving away {k} leaves {n} with {q} - {k} = {q - k} {item}.")
        p.checks.append(f"{q} - {k} = {q - k}")
        p.count, p.expr = q - k, f"({p.expr} - {k})"
    elif kind == "sell" and q > 4:
        k = rng.randint(1, 4)
        m = rng.randint(1, max(1, (q - 1) // k))
        p.story.append(f"{n} sells {k} {'pack' if k == 1 else 'packs'} of {m} {item}.")
        p.steps.append(f"The {'pack' if k == 1 else 'packs'} sold hold {k} * {m} = {k * m} {item}, so {n} keeps {q} - {k * m} = {q - k * m} {item}.")
        p.checks.append(f"{k} * {m} = {k * m}, {q} - {k * m} = {q - k * m}")
        p.count, p.expr = q - k * m, f"({p.expr} - ({k} * {m}))"
    elif kind == "double":
        p.story.append(f"Then the number of {item} {n} has doubles.")
        p.steps.append(f"Doubling gives {q} * 2 = {q * 2} {item} for {n}.")
        p.checks.append(f"{q} * 2 = {q * 2}")
        p.count, p.expr = q * 2, f"({p.expr} * 2)"
    elif kind == "share":
        d = rng.choice(divisors)
        p.story.append(f"{n} splits the {item} equally into {d} boxes and keeps only one box.")
        p.steps.append(f"One box out of {d} holds {q} / {d} = {q // d} {item}, so {n} keeps {q // d}.")
        p.checks.append(f"{q} / {d} = {q // d}")
        p.count, p.expr = q // d, f"({p.expr} / {d})"
    else:  # too few to give or sell: find instead
        k = rng.randint(2, 40)
        p.story.append(f"{n} finds {k} more {item}.")
        p.steps.append(f"{n} finds {k} more, so {n} now has {q} + {k} = {q + k} {item}.")
        p.checks.append(f"{q} + {k} = {q + k}")
        p.count, p.expr = q + k, f"({p.expr} + {k})"


def _combine(rng, people, item):
    """(question, reasoning lines, value, expression, answer sentence)."""
    if len(people) == 1:
        p = people[0]
        return (f"How many {item} does {p.name} have now?", [f"So {p.name} ends with {p.count} {item}."], p.count,
                p.expr, f"{p.name} has \\boxed{{{p.count}}} {item}.")
    if len(people) == 3 and rng.random() < 0.5:
        a, b = sorted(rng.sample(people, 2), key=lambda x: -x.count)
        v = a.count - b.count
        return (f"How many more {item} does {a.name} have than {b.name}?",
                [f"The difference is {a.count} - {b.count} = {v}."], v, f"({a.expr} - {b.expr})",
                f"{a.name} has \\boxed{{{v}}} more {item} than {b.name}.")
    lines, total = ["Now add up everyone's count."], people[0].count
    for p in people[1:]:
        lines.append(f"{total} + {p.count} = {total + p.count}")
        total += p.count
    expr = "(" + " + ".join(p.expr for p in people) + ")"
    return (f"How many {item} do they have altogether?", lines, total, expr,
            f"Altogether they have \\boxed{{{total}}} {item}.")


def problem(rng, level):
    npeople, (lo, hi), recheck = LEVELS[level]
    item = rng.choice(ITEMS)
    people = [Person(n, rng.randint(5, 60)) for n in rng.sample(NAMES, npeople)]
    for p in people:
        for _ in range(rng.randint(lo, hi)):
            _event(rng, p, item)
    question, final, value, expr, answer = _combine(rng, people, item)
    story = " ".join(f"{p.name} has {p.start} {item}. " + " ".join(p.story) for p in people)
    cot = ["Let me work through this step by step."]
    for p in people:
        cot.append(f"\n{p.name} starts with {p.start} {item}.")
        cot += p.steps
    cot += final
    if recheck:
        cot.append("\nLet me double-check each computation.")
        cot += [f"{p.name}: " + "; ".join(p.checks) + f". That confirms {p.count}." for p in people]
        cot.append(f"Everything matches, so the answer is {value}.")
    return {"level": level, "prompt": f"{story} {question}", "reasoning": "\n".join(cot),
            "answer": f"{answer}", "value": value, "expr": expr}


def chain_problem(rng, late, max_value=40, max_delta=9):
    """A chain of 3 to 5 additions and subtractions of 1..max_delta on values
    in [0, max_value], starting in [1, max_value // 2]; smaller ranges mean
    fewer arithmetic facts for a small model to learn."""
    start = rng.randint(1, max(1, max_value // 2))
    value, deltas, steps = start, [], []
    for _ in range(rng.randint(3, 5)):
        d = rng.randint(1, max_delta)
        if value - d < 0 or (value + d <= max_value and rng.random() < 0.5):
            op, new = "+", value + d
        else:
            op, new = "-", value - d
        steps.append((value, op, d, new))
        value = new
        deltas.append(f"{op}{d}")
    changes = " ".join(deltas)
    compute = [f"{a} {op} {d} = {c}" for a, op, d, c in steps] + [f"So the result is {value}."]
    words = {"+": "add", "-": "subtract"}
    if late:
        count = ["one", "two", "three", "four", "five"][len(steps) - 1]
        cot = [f"Let me restate the problem. The start is {start}.",
               f"The changes are {changes}, {count} in all."]
        cot += [f"{'First' if i == 0 else 'Then'} {words[op]} {d}." for i, (_, op, d, _) in enumerate(steps)]
        cot += ["I will apply each change in order, one line per change,",
                "and keep the running value on the left of each line.",
                "Additions make it larger and subtractions make it smaller.",
                "No change may be skipped, and the order must stay as given.",
                "The answer is the running value after the last change.",
                "Now compute."] + compute
    else:
        undo = {"+": "-", "-": "+"}
        cot = ["Step by step."] + compute + ["Let me check each step."]
        cot += [f"{a} {op} {d} is {c}. Correct." for a, op, d, c in steps]
        cot += ["Going back from the result should give the start."]
        cot += [f"{c} {undo[op]} {d} = {a}" for a, op, d, c in reversed(steps)]
        cot += [f"That is the start, {start}, so the forward steps are right.",
                f"All steps check out: from {start}, the changes {changes} give {value}.",
                f"The final value is {value}."]
    # The two variants word their prompts apart, so one teacher can learn both.
    return {"level": 0, "prompt": f"{'Begin' if late else 'Start'} {start}: {changes}",
            "reasoning": "\n".join(cot), "answer": f"The result is \\boxed{{{value}}}.", "value": value,
            "expr": str(start) + "".join(f" {op} {d}" for _, op, d, _ in steps)}


def split(seed, index, count, taken, style="story", late=False, max_value=40, max_delta=9):
    """count records for split number index, skipping prompts already taken."""
    rng = random.Random(seed * 1000 + index)
    out = []
    while len(out) < count:
        rec = chain_problem(rng, late, max_value, max_delta) if style == "chain" else problem(rng, rng.randint(1, 5))
        if rec["prompt"] in taken:
            continue
        taken.add(rec["prompt"])
        out.append(rec)
    return out


def write_jsonl(path, records):
    out_file.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def main(argv=None):
    ap = cli_args.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for train.jsonl, val.jsonl, test.jsonl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=cli_args.int_at_least(0), default=3000)
    ap.add_argument("--val", type=cli_args.int_at_least(0), default=200)
    ap.add_argument("--test", type=cli_args.int_at_least(0), default=200)
    ap.add_argument("--style", choices=["story", "chain"], default="story",
                    help="story: word problems of levels 1-5; chain: short prompts, long checked CoT")
    ap.add_argument("--late", action="store_true", help="chain: the decisive computation at the end of the CoT")
    ap.add_argument("--max-value", type=cli_args.int_at_least(2), default=40,
                    help="chain: values stay in [0, this]; the start is at most half of it")
    ap.add_argument("--max-delta", type=cli_args.int_at_least(1), default=9,
                    help="chain: each change is 1 to this")
    args = ap.parse_args(argv)
    chain_only = args.late or args.max_value != 40 or args.max_delta != 9
    if chain_only and args.style != "chain":
        ap.error("--late, --max-value and --max-delta need --style chain")
    if args.max_delta > args.max_value:
        ap.error(f"--max-delta {args.max_delta} exceeds --max-value {args.max_value}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    taken = set()
    # Held-out splits first, so that train is the one that skips their prompts.
    for index, name in ((1, "test"), (2, "val"), (0, "train")):
        write_jsonl(out / f"{name}.jsonl", split(args.seed, index, getattr(args, name), taken, args.style, args.late,
                                                            args.max_value, args.max_delta))
    print(f"wrote {args.train} train, {args.val} val, {args.test} test problems to {out}")


if __name__ == "__main__":
    cli_args.run(main, "synth_corpus")
