"""perf/cost_model.py's op sequence against what `essence bench` counts: per
micro-batch, every op of the layers (norms, the fused residual add + norm,
the fused QKV split with qk-norm and rope, attention, SwiGLU, embeddings) is called as often as the cost model
says, so that its per-op table reads against bench's. The LM head's ops
depend on the packing's supervised rows and are left to test_cost_model.py."""
import importlib.util
import json

from train_env import ROOT, run_config, run_essence

spec = importlib.util.spec_from_file_location("cost_model", ROOT / "perf" / "cost_model.py")
cm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cm)

LAYER_OPS = ("embed_fwd", "embed_bwd", "rmsnorm_fwd", "rmsnorm_bwd", "add_rmsnorm_fwd", "rope_fwd",
             "rope_bwd", "qkv_fwd", "qkv_bwd", "attention_fwd", "attention_bwd", "swiglu_fwd", "swiglu_bwd",
             "add")


def test_bench_calls_are_the_cost_models(tmp_path, corpus):
    cfg = run_config(tmp_path, corpus, tmp_path / "out", student={"num_hidden_layers": 3})
    p = run_essence(["bench", "--config", str(cfg), "--json", "--warmup", "0", "--steps", "1",
                     "--op-steps", "1"])
    ops = json.loads(p.stdout)["ops"]
    mbs = ops["embed_fwd"]["calls_per_step"]  # one embedding per micro-batch
    assert mbs >= 1
    m = cm.Model(cm.DEFAULT_TFLOPS, cm.DEFAULT_TBPS)
    cm.step(m, cm.Shape(str(tmp_path / "student.json")), 512, 4, 512, 256)
    for op in LAYER_OPS:
        got = ops.get(op, {}).get("calls_per_step", 0)
        assert got == m.ops[op][3] * mbs, (op, got, m.ops[op][3], mbs)
    assert ops["add_rmsnorm_fwd"]["calls_per_step"] == 2 * 3 * mbs and "add" not in ops
    # the update: one AdamW call for all tensors, as the model counts it; the
    # batch goes up asynchronously, nothing through the synchronous upload
    assert ops["adamw"]["calls_per_step"] == m.ops["adamw"][3] == 1
    assert ops["upload_async"]["calls_per_step"] > 0 and "upload" not in ops
