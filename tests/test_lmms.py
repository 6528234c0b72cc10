"""The lmms-eval plugin (egg.lmms): entry-point discovery, the lmms API on Instance objects,
and a full ``lmms-eval --model egg`` run on a TextVQA-format fixture task.

Needs ``pip install -e .[lmms]`` (lmms-eval and the light packages its CLI imports). The
subprocesses run from a temporary directory: a stale ``egg.egg-info`` in the repository
root (left by an old non-PEP 660 install) would otherwise shadow the installed metadata
that carries the entry point.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="pip install -e .[lmms]")
pytest.importorskip("datasets", reason="pip install -e .[lmms]")
Instance = pytest.importorskip("lmms_eval.api.instance").Instance

from egg import datasets as benchmarks  # noqa: E402
from egg.lmms import EGG, manifest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


def test_manifest():
    m = manifest()
    assert m.model_id == "egg" and m.simple_class_path == "egg.lmms.EGG"


def test_entry_point_is_discovered(tmp_path):
    code = ("import lmms_eval.models as M\n"
            "cls = M.get_model('egg')\n"
            "print(cls.__module__ + '.' + cls.__name__)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "egg.lmms.EGG", "is egg installed (pip install -e .[lmms])?"


def _requests(items, task="fixture", split="validation"):
    docs = {i: {"image": it.image, "question": it.question} for i, it in enumerate(items)}
    reqs = [Instance(request_type="generate_until",
                     arguments=(it.question, {"max_new_tokens": 6, "until": ["ASSISTANT:"]},
                                lambda doc: [doc["image"]], i, task, split),
                     idx=0, metadata={"task": task, "doc_id": i, "repeats": 1})
            for i, it in enumerate(items)]
    return {task: {split: docs}}, reqs


@pytest.mark.slow
@pytest.mark.parametrize("method", ["base", "egg", "vicrop-rel-att"])
def test_generate_until_matches_egg(vlm, method):
    from egg import bench
    from egg.runs.registry import METHODS, effective_options

    items = [bench.item("text", "test", i, 0) for i in range(2)]
    model = EGG(method=method, vlm=vlm, max_iterations=1) if method == "egg" else EGG(method=method, vlm=vlm)
    model.task_dict, reqs = _requests(items)
    outs = model.generate_until(reqs)
    assert len(outs) == 2 and all(isinstance(o, str) for o in outs)
    opts = {"max_iterations": 1} if method == "egg" else {}
    params = effective_options(method, opts)
    params["max_new_tokens"] = 6
    for it, o in zip(items, outs):
        assert o == METHODS[method](vlm, it, **params).answer


def test_bad_arguments(vlm):
    with pytest.raises(ValueError, match="unknown egg method"):
        EGG(method="nope", vlm=vlm)
    with pytest.raises(ValueError, match="oracle"):
        EGG(method="oracle", vlm=vlm)
    with pytest.raises(TypeError, match="no option"):
        EGG(method="base", vlm=vlm, k=2)
    with pytest.raises(NotImplementedError):
        EGG(method="base", vlm=vlm).loglikelihood([])


TASK_YAML = """task: textvqa_fixture
dataset_path: parquet
dataset_kwargs:
  data_files:
    validation: {data}
test_split: validation
output_type: generate_until
doc_to_visual: !function utils.textvqa_doc_to_visual
doc_to_text: !function utils.textvqa_doc_to_text
doc_to_target: "answer"
generation_kwargs:
  until:
    - "ASSISTANT:"
  max_new_tokens: 8
process_results: !function utils.textvqa_process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: "\\nAnswer the question using a single word or phrase."
    ocr: false
"""


@pytest.mark.slow
def test_lmms_eval_cli_runs_egg(ref_dir, tmp_path):
    """lmms-eval's own CLI, loader and textvqa scoring (its textvqa_val task with the dataset
    swapped for a TextVQA-format fixture), with --model egg."""
    import lmms_eval

    # the one installed beside this interpreter: another on PATH belongs to another environment
    # (one left by an interrupted setup ran a deleted venv's Python: stop 64)
    beside = Path(sys.executable).with_name("lmms-eval")
    exe = str(beside) if beside.exists() else shutil.which("lmms-eval")
    data = benchmarks.write_fixture("textvqa", tmp_path / "data", n=2)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    shutil.copy(Path(lmms_eval.__file__).parent / "tasks" / "textvqa" / "utils.py", tasks / "utils.py")
    parquet = next((data / "data").glob("validation-*.parquet"))
    (tasks / "textvqa_fixture.yaml").write_text(TASK_YAML.format(data=parquet))
    out = tmp_path / "out"
    cmd = [exe, "--model", "egg", "--model_args", f"pretrained={ref_dir},method=egg,max_iterations=1",
           "--tasks", "textvqa_fixture", "--include_path", str(tasks), "--batch_size", "1",
           "--output_path", str(out), "--log_samples"]
    r = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    results = list(out.rglob("*_results.json"))
    assert results, r.stdout[-2000:]
    res = json.loads(results[0].read_text())
    assert "textvqa_fixture" in res["results"]
    assert "exact_match,none" in res["results"]["textvqa_fixture"]
    samples = list(out.rglob("*samples_textvqa_fixture*.jsonl"))
    assert samples and len(samples[0].read_text().strip().splitlines()) == 2
