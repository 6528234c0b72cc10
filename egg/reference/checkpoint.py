"""Saving the reference model and resuming its training: a finished directory is what
`egg.load_model` reads; a checkpoint is what `--resume 1` continues from; `--init` starts a
later stage from a finished directory; a rendered training set is kept for the next run."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..synthetic.core import GEOMETRY_ATTR

if TYPE_CHECKING:
    from .probes import AuxHeads


def no_hub_kernels() -> dict:
    """`from_pretrained`'s keywords for a model that trains offline. Where transformers has hub
    kernels (5.x) it turns them on whenever the `kernels` package is installed, and then
    `model.train()` on a GPU fetches one from the Hub: on a GPU machine without network, every
    `--init` run stopped there with a ConnectError (the lent H200, stop 45). The reference model
    needs none."""
    from transformers import PreTrainedModel

    return {"use_kernels": False} if hasattr(PreTrainedModel, "set_use_kernels") else {}


def environment(step: int = 0) -> dict:
    """What a training process ran on, from decoder step `step`: egg's commit, the libraries'
    versions and the CPU. Why: run 23 replayed with today's code, which matches its own code bit
    for bit on a short run, did not bind the map as run 23 did (CHANGELOG, stop 58), and its log
    could not say which package or machine had changed."""
    import platform
    import subprocess

    import PIL
    import torch
    import transformers

    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        if not (root / ".git").exists():  # an installed copy: a repository around it is not egg's
            return None
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):  # no git
            return None

    status = git("status", "--porcelain", "--", "egg")
    cpu = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in (cpu.read_text().splitlines() if cpu.exists() else [])
             if ln.startswith("model name")]
    return {"from_step": step, "commit": git("rev-parse", "HEAD"), "egg_modified": None if status is None else bool(status),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "pillow": PIL.__version__, "cpu": names[0] if names else platform.processor(),
            "cores": os.cpu_count()}


def save_checkpoint(path: Path, model, aux: AuxHeads | None, opt, sched, record: dict, smooth, step: int) -> None:
    """Everything `--resume 1` needs to continue at `step`, written atomically."""
    import torch

    torch.save({"model": model.state_dict(), "aux": aux.state() if aux else None, "opt": opt.state_dict(),
                "sched": sched.state_dict(), "record": record, "smooth": smooth, "step": step},
               path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)


def load_checkpoint(path: Path, config: dict, model, aux: AuxHeads | None, opt, sched) -> tuple[dict, dict, int]:
    """Restore `save_checkpoint`'s state in place; returns the loss record, smoothed losses and step.
    Refuses a checkpoint written with another `config` (only `resume` may differ)."""
    import torch

    state = torch.load(path, weights_only=False)
    if {**state["record"]["config"], "resume": 0} != {**config, "resume": 0}:
        raise SystemExit(f"{path} was written with other settings; delete it or rerun with them "
                         f"(resume needs the same TrainConfig)")
    model.load_state_dict(state["model"])
    if aux is not None:
        aux.load_state(state["aux"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    return state["record"], state["smooth"], state["step"]


def write_dir(out: Path, fill) -> None:
    """Fill a fresh `out`.tmp with `fill(tmp)`, then swap it in for `out`: a finished directory
    is never left half-written."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fill(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def save(model, processor, out: Path, record: dict) -> None:
    """A finished (or periodic) model directory, written through `write_dir`."""
    def fill(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        setattr(model.config, GEOMETRY_ATTR, record["config"]["geometry"])  # bench.geometry_for reads it
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "training_log.json").write_text(json.dumps(record, indent=1))

    write_dir(out, fill)


def _code_digest() -> str:
    """A digest of the code a rendered training set comes from: the benchmark's generators, the
    example mixture and the tokeniser, and the versions of the libraries that draw and resize (and
    of matplotlib, whose fonts they draw with). A cache written by other code is never read."""
    import matplotlib
    import PIL

    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "synthetic").rglob("*.py")) + [root / "reference" / n for n in ("data.py", "build.py", "detail.py")]
    h = hashlib.sha256(f"{PIL.__version__} {np.__version__} {matplotlib.__version__}".encode())
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def cached_render(cfg, model, work: Path, log) -> tuple[list, list]:
    """`data.render_dataset`'s result, from `work`/render-<key>.pkl when an earlier run rendered the
    same jobs with the same code, else rendered and saved there. Why: rendering the preset's 600
    items per family takes 4.5 min of 2 cores, and a session's runs differ in their training flags
    (stop 45 rendered the same set five times); loading it took 19 s."""
    from .data import render_dataset, render_jobs

    key = hashlib.sha256(json.dumps([render_jobs(cfg, model), _code_digest()], sort_keys=True).encode()).hexdigest()
    path = work / f"render-{key[:16]}.pkl"
    if path.exists():
        with open(path, "rb") as f:
            data, reads = pickle.load(f)
        log(f"rendered set loaded from {path}: {len(data)} examples, {len(reads)} reading crops")
        return data, reads
    data, reads = render_dataset(cfg, model, log)
    with open(path.with_suffix(".tmp"), "wb") as f:
        pickle.dump((data, reads), f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(path.with_suffix(".tmp"), path)
    return data, reads


def _finished(path: str, flag: str) -> tuple[Path, dict]:
    """A finished model's directory and training record; refuses a directory without one."""
    p = Path(path)
    if not (p / "config.json").exists() or not (p / "training_log.json").exists():
        raise SystemExit(f"{flag} {path}: no reference model saved there; train the stage it continues first "
                         "(e.g. make train-reference PRESET=llava15)")
    return p, json.loads((p / "training_log.json").read_text())


# What a vision tower and projector must share with the model they are copied into.
VISION_SHAPE = ("image_size", "patch_size", "vision_hidden", "vision_layers", "vision_heads", "text_hidden",
                "position_init")


def load_vision(path: str, model_config: dict, model) -> dict:
    """Copy a finished model's vision tower and projector into `model` (`TrainConfig.init_vision`:
    a new decoder on a tower that reads already, without its warm-up); the model's training record.
    Refuses a tower or projector of another shape than `model_config`'s."""
    from transformers import LlavaForConditionalGeneration

    from .build import ReferenceConfig

    p, record = _finished(path, "--init-vision")
    theirs = ReferenceConfig(**record["config"]["model"]).to_dict()
    if any(theirs[k] != model_config[k] for k in VISION_SHAPE):
        raise SystemExit(f"--init-vision {path} has another vision tower or projector "
                         f"({ {k: theirs[k] for k in VISION_SHAPE} }); this run builds "
                         f"{ {k: model_config[k] for k in VISION_SHAPE} }")
    source = LlavaForConditionalGeneration.from_pretrained(p, **no_hub_kernels()).model
    model.model.vision_tower.load_state_dict(source.vision_tower.state_dict())
    model.model.multi_modal_projector.load_state_dict(source.multi_modal_projector.state_dict())
    return record


def load_initial(path: str, model_config: dict, device: str):
    """The finished model a later stage starts from (`TrainConfig.init`), with its training record;
    refuses a directory that holds no model or one of another shape than `model_config`."""
    from transformers import LlavaForConditionalGeneration

    p, record = _finished(path, "--init")
    if record["config"]["model"] != model_config:
        raise SystemExit(f"--init {path} is a model of another shape ({record['config']['model']}); "
                         f"this run builds {model_config}")
    return LlavaForConditionalGeneration.from_pretrained(p, **no_hub_kernels()).to(device), record
