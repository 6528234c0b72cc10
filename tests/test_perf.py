"""The cost benchmark's performance figures (egg.runs.perf): the measures are right, and
``python -m egg cost`` prints every figure issue #19 asks for. No timing is asserted."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import egg
from egg import synthetic as bench
from egg.runs import perf

REPO = Path(__file__).resolve().parent.parent


def test_tensor_peak_counts_what_is_alive_at_once():
    def two_at_once():
        a = torch.ones(1024, 1024)  # 4 MiB
        b = torch.ones(1024, 1024)
        return float(a.sum() + b.sum())

    def one_after_another():
        for _ in range(2):
            x = torch.ones(1024, 1024)
            del x

    assert 7.9 <= perf.tensor_peak_mb(two_at_once) <= 9.0
    assert 3.9 <= perf.tensor_peak_mb(one_after_another) <= 5.0


def test_the_memory_probe_counts_a_processors_pixels(adapter):
    """A processor's pixels come from numpy (``torch.from_numpy``), which the profiler does not
    see; on a GPU they are copied to the device and counted. The probe counts them too, so
    that ``answer``'s pixels weigh as ``ground``'s (which it concatenates with torch) do."""
    import numpy as np

    held = []
    assert 3.9 <= perf.tensor_peak_mb(lambda: held.append(torch.from_numpy(np.ones((1024, 1024), np.float32)))) <= 5.0
    assert torch.from_numpy(np.zeros(3)).numpy().base is not None  # the patch is gone afterwards
    image = bench.item("text", "test", 0, 0).image
    prep = []
    peak = perf.tensor_peak_mb(lambda: prep.append(adapter.prepare([image], "what ?")))
    assert peak * 2**20 >= prep[0].inputs["pixel_values"].nbytes


def test_the_memory_probe_writes_nothing_to_stderr():
    """Freeing, under the profiler, a block allocated before it started makes torch print a
    time-stamped warning to stderr (once a process); a notebook that probes memory would then
    show a new line at every run. In a fresh process, the probe must print nothing."""
    code = ("import torch\nfrom egg.runs import perf\nheld = [torch.ones(1024, 1024)]\n"
            "perf.tensor_peak_mb(lambda: (held.clear(), torch.ones(8)))\nprint('done')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "done", r.stderr[-2000:]
    assert r.stderr == ""


def test_memory_and_iteration_figures_on_a_random_24x24_llava():
    vlm = perf.random_llava(24)
    assert vlm.adapter.prepare([bench.item("text", "test", 0, 0).image], "what ?").grids[0].shape == (24, 24)
    items = [bench.item("text", "test", i, 0) for i in range(2)]
    mem = perf.memory(vlm, items)
    assert mem["ground"]["peak_mb"] > mem["answer"]["peak_mb"] > mem["weights_mb"] > 0
    # answering over the chosen crops too costs at least what answering over the original alone does
    assert mem["same_prompt"]["peak_mb"] >= mem["answer"]["peak_mb"]
    assert mem["ratio_same_prompt"] == mem["ground"]["peak_mb"] / mem["same_prompt"]["peak_mb"]
    ckpt = perf.memory(perf.random_llava(24, gradient_checkpointing=True), items)
    assert ckpt["ground"]["above_weights_mb"] < mem["ground"]["above_weights_mb"]  # checkpointing saves memory
    it = perf.iteration_cost(vlm, items, repeats=1)
    # seconds, not compared: a busy CPU can slow one pass past the other (the module asserts no timing)
    assert it["iteration"] > 0 and it["forward"] > 0 and it["ratio"] == it["iteration"] / it["forward"]


def test_cost_command_prints_every_figure(tmp_path):
    out = tmp_path / "cost.json"
    r = subprocess.run([sys.executable, "-m", "egg", "cost", "--n", "1", "--families", "text", "--repeats", "1",
                        "--iterations", "1", "--random-grid", "12", "--json", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    for phrase in ("x egg.answer per question", "x a plain forward", "peak memory: ground =",
                   "x the throughput of single calls", "with gradient_checkpointing=True"):
        assert r.stdout.count(phrase) >= 1, phrase
    assert "USDT" not in r.stderr
    figs = json.loads(out.read_text())["figures"]
    assert set(figs) == {"model", "random12", "random12_checkpointing_memory"}
    assert figs["model"]["batch"]["same_results"] is True


def test_the_7b_shape_is_llava_1_5_7b():
    """The shape `egg cost` builds on a GPU has the real checkpoint's parameter count
    (llava-hf/llava-1.5-7b-hf: 7,063,427,072), counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = perf.shape_model(perf.SHAPES["llava-1.5-7b"], image_token_id=32000)
    assert sum(p.numel() for p in model.parameters()) == 7_063_427_072
    assert model.config.vision_feature_layer == -2 and model.config.text_config.num_hidden_layers == 32


def test_a_random_model_of_a_real_shape_grounds_in_bfloat16():
    """The same builder at small widths, in bfloat16: real LLaVA classes, 24 x 24 tokens, and
    the figures `egg cost` prints for it."""
    import dataclasses

    small = dataclasses.replace(perf.SHAPES["llava-1.5-7b"], vision_hidden=64, vision_intermediate=128,
                                vision_layers=2, vision_heads=2, text_hidden=128, text_intermediate=256,
                                text_layers=2, text_heads=4)
    vlm = perf.random_shape(small, dtype="bfloat16")
    assert {p.dtype for p in vlm.model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32  # restored after building
    assert vlm.model.config.text_config.vocab_size == 32064
    it = bench.item("text", "test", 0, 0)
    g = egg.ground(vlm, it.image, it.question)
    assert g.trace[0].maps[0].shape == (24, 24) and np.isfinite(g.trace[0].maps[0]).all()
    assert perf.iteration_cost(vlm, [it], repeats=1)["iteration"] > 0
    with pytest.raises(ValueError, match="unknown shape 'llava-9b'"):
        perf.random_shape("llava-9b")


def test_a_subset_of_the_figures_and_a_shape_cut_to_fewer_layers(tmp_path):
    """`egg cost --figures iteration` measures that figure alone (a real-width model on a
    CPU has time for no more), and `--shape-layers` keeps the shape's widths with fewer
    decoder layers; a figure or a depth that does not exist is refused by name."""
    import dataclasses

    from egg.__main__ import FIGURE_NAMES

    assert FIGURE_NAMES == perf.FIGURES
    small = dataclasses.replace(perf.SHAPES["llava-1.5-7b"], vision_hidden=64, vision_intermediate=128,
                                vision_layers=2, vision_heads=2, text_hidden=128, text_intermediate=256,
                                text_layers=3, text_heads=4)
    vlm = perf.random_shape(small, layers=1)
    assert vlm.adapter.num_layers == 1 and vlm.model.config.text_config.hidden_size == 128
    assert "1 of its 3 decoder layers" in vlm.source
    items = [bench.item("text", "test", 0, 0)]
    f = perf.figures(vlm, items, repeats=1, which=("iteration",))
    assert set(f) == {"iteration"} and f["iteration"]["ratio"] > 1
    text = perf.format_figures("m", f)
    assert "x a plain forward" in text and "peak memory" not in text and "batch of" not in text
    with pytest.raises(ValueError, match="unknown figures"):
        perf.figures(vlm, items, which=("speed",))
    with pytest.raises(ValueError, match=r"layers must be in \[1, 32\]"):
        perf.random_shape("llava-1.5-7b", layers=40)
    r = subprocess.run([sys.executable, "-m", "egg", "cost", "--figures", "iteration,speed"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "unknown figures ['speed']" in r.stderr
