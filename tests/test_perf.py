"""The cost benchmark's performance figures (egg.runs.perf): the measures are right, and
``python -m egg cost`` prints every figure issue #19 asks for. No timing is asserted."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

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
    assert it["iteration"] > it["forward"] > 0


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
