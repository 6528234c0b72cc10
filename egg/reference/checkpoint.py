"""Saving the reference model and resuming its training: a finished directory is what
`egg.load_model` reads; a checkpoint is what `--resume 1` continues from; `--init` starts a
later stage from a finished directory."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..synthetic.core import GEOMETRY_ATTR

if TYPE_CHECKING:
    from .train import AuxHeads


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


def save(model, processor, out: Path, record: dict) -> None:
    """Write atomically-ish: a finished directory is never left half-written."""
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    setattr(model.config, GEOMETRY_ATTR, record["config"]["geometry"])  # bench.geometry_for reads it
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / "training_log.json").write_text(json.dumps(record, indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def load_initial(path: str, model_config: dict, device: str):
    """The finished model a later stage starts from (`TrainConfig.init`), with its training record;
    refuses a directory that holds no model or one of another shape than `model_config`."""
    from transformers import LlavaForConditionalGeneration

    p = Path(path)
    if not (p / "config.json").exists() or not (p / "training_log.json").exists():
        raise SystemExit(f"--init {path}: no reference model saved there; train the stage it continues first "
                         "(e.g. make train-reference PRESET=llava15)")
    record = json.loads((p / "training_log.json").read_text())
    if record["config"]["model"] != model_config:
        raise SystemExit(f"--init {path} is a model of another shape ({record['config']['model']}); "
                         f"this run builds {model_config}")
    return LlavaForConditionalGeneration.from_pretrained(p).to(device), record
