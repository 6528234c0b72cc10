"""The README tells the truth: its result blocks are the notebooks' own outputs, and every
repository file it, the notebooks or the package's docstrings cite exists."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- from (notebooks/[\w.-]+\.ipynb) -->\n(.*?)\n<!-- end -->", re.S)


def _outputs(notebook: Path) -> str:
    """Every text a notebook's code cells printed, as committed."""
    nb = json.loads(notebook.read_text())
    out = []
    for cell in nb["cells"]:
        for o in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            if o.get("output_type") == "stream":
                out.append("".join(o["text"]))
    return "\n".join(out)


def test_readme_result_blocks_are_the_notebooks_outputs():
    blocks = BLOCK.findall((ROOT / "README.md").read_text())
    assert {nb for nb, _ in blocks} >= {"notebooks/02_main_results.ipynb", "notebooks/09_reference_card.ipynb"}
    for nb, text in blocks:
        assert text.strip() in _outputs(ROOT / nb), f"README block from {nb} differs from the notebook's output"


CITED = re.compile(r"(?<![\w/.])((?:docs|egg|notebooks|figures|data|tests)/[\w/.-]*\w\.(?:md|py|ipynb|png|json|cfg))")


def _cited(text: str) -> set[str]:
    return {m for m in CITED.findall(text) if "*" not in m and "<" not in m}


@pytest.mark.parametrize("source", ["README.md", "CHANGELOG.md", "docs/method.md", "notebooks", "egg"])
def test_every_cited_file_exists(source):
    path = ROOT / source
    files = [path] if path.is_file() else sorted([*path.rglob("*.ipynb"), *path.rglob("*.py")])
    missing = {(f.name, c) for f in files for c in _cited(f.read_text()) if not (ROOT / c).exists()}
    assert not missing, sorted(missing)


def test_reference_model_description_matches_the_shipped_model():
    """The README's numbers about data/reference: its shape from config.json, its size from the
    weights, its recipe and cost from the training record."""
    from transformers import AutoConfig, LlavaForConditionalGeneration

    readme = " ".join((ROOT / "README.md").read_text().split())
    cfg = AutoConfig.from_pretrained(ROOT / "data" / "reference")
    v, t = cfg.vision_config, cfg.text_config
    params = sum(p.numel() for p in LlavaForConditionalGeneration.from_pretrained(ROOT / "data" / "reference").parameters())
    log = json.loads((ROOT / "data" / "reference" / "training_log.json").read_text())
    grid = v.image_size // v.patch_size
    expected = [
        f"a {v.num_hidden_layers}-layer CLIP tower with {v.image_size} px input and patch {v.patch_size} "
        f"({grid} × {grid} tokens per image), plus a {t.num_hidden_layers}-layer Llama decoder, "
        f"{params / 1e6:.1f} M parameters in all",
        f"runs {log['config']['vision_steps']} vision warm-up steps, then exactly {log['steps']} decoder steps "
        f"(seed {log['config']['seed']}, probe weight {log['config']['position']})",
        f"The committed run used {log['cpu_minutes']:.0f} CPU-minutes, about {log['cpu_minutes'] / 2:.0f} min on 2 "
        f"idle cores; it took {log['minutes']:.0f} min",
        f"seeded, {log['steps']} decoder steps, about {log['cpu_minutes'] / 2:.0f} min on 2 cores",
    ]
    missing = [e for e in expected if e not in readme]
    assert not missing, missing


RUN_TIME = re.compile(r"make (setup|reproduce|test)\b[^\n]*?about (\d+) min")


def test_readme_run_times_are_the_measured_ones():
    """Every "make X ... about N min" in the README is docs/timings.json's fresh-clone measurement
    (`make timings`), to the nearest minute or the one next to it."""
    rec = json.loads((ROOT / "docs" / "timings.json").read_text())
    said = RUN_TIME.findall((ROOT / "README.md").read_text())
    assert {step for step, _ in said} == {"setup", "reproduce", "test"}
    for step, minutes in said:
        measured = rec["seconds"][step] / 60
        assert abs(int(minutes) - measured) <= 1, f"README says make {step} takes about {minutes} min; " \
                                                   f"measured {measured:.1f} min at {rec['commit']} (make timings)"


def test_timings_clone_the_head_and_name_a_failing_step():
    """`make timings` measures a fresh clone of the committed HEAD; a step that fails stops it by name."""
    import subprocess

    from egg import timings

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    assert timings.measure(steps=())["commit"] == head.strip()
    with pytest.raises(SystemExit, match="make no-such-target failed"):
        timings.measure(steps=("no-such-target",), log=lambda _: None)
