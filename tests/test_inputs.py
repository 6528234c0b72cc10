"""Inputs that fail with egg's own clear errors, before any model pass (issue: reliability)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import egg
from egg import images
from egg.images import load_image

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16, np.int16])
def test_integer_arrays_are_read_by_value(dtype):
    a = np.zeros((4, 6, 3), dtype=dtype)
    a[..., 0] = 200
    a[1, 2] = (10, 20, 30)
    img = np.asarray(load_image(a))
    assert img[0, 0].tolist() == [200, 0, 0] and img[1, 2].tolist() == [10, 20, 30]


def test_integer_arrays_outside_0_255_and_float_arrays_holding_0_255_are_errors():
    with pytest.raises(ValueError, match=r"uint16 image array has values in \[4000, 4000\].*0\.\.255"):
        load_image(np.full((4, 4), 4000, dtype=np.uint16))
    with pytest.raises(ValueError, match=r"float image array has values in \[255, 255\].*as uint8"):
        load_image(np.full((4, 4, 3), 255.0))
    assert np.asarray(load_image(np.full((2, 2), 1.0)))[0, 0].tolist() == [255, 255, 255]


def test_huge_images_are_downscaled_with_a_warning(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 10_000)
    with pytest.warns(UserWarning, match=r"400x300 pixels is above egg.images.MAX_PIXELS \(10000\); downscaled"):
        img = load_image(np.zeros((300, 400, 3), dtype=np.uint8))
    assert img.size[0] * img.size[1] <= 10_000 and abs(img.size[0] / img.size[1] - 4 / 3) < 0.05


def test_decompression_bomb_file_is_eggs_value_error(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 90000 px > 2 x 100: PIL's bomb error
    with pytest.raises(ValueError, match=r"cannot read image file .*big\.png"):
        load_image(p)


def test_a_url_is_refused_as_a_url():
    with pytest.raises(ValueError, match=r"'https://example.org/a.png' is a URL; egg reads local files only"):
        load_image("https://example.org/a.png")


# --------------------------------------------------------------------------- questions


def test_image_placeholder_in_a_question_is_answered(vlm, scene):
    a = egg.answer(vlm, scene, "what is in <image> the picture ?")
    g = egg.ground(vlm, scene, "<image> what colour ?", stopping="fixed", fixed_n=1)
    assert isinstance(a, str) and isinstance(g.answer, str)
    assert vlm.adapter.neutralise("a <image> b") == "a < image> b"


def test_a_question_longer_than_the_context_names_both_lengths(vlm, scene):
    limit = vlm.adapter.max_positions
    assert limit is not None
    before = vlm.adapter.counter.copy()
    with pytest.raises(ValueError, match=rf"the prompt is \d+ tokens \(\d+ of them the question.*context of {limit}"):
        egg.answer(vlm, scene, "word " * (limit + 10))
    assert vlm.adapter.counter.forward == before.forward


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("kwargs, match", [
    ({"sigma": "1.5"}, r"sigma must be a number >= 0, got '1.5'"),
    ({"sigma": -1}, r"sigma must be a number >= 0, got -1"),
    ({"k": None}, r"k must be an integer >= 1, got None"),
    ({"num_layers": 2.7}, r"num_layers must be an integer in \[1, \d+\], got 2.7"),
    ({"threshold": "elbo"}, r"threshold must be one of \['elbow', 'otsu', 'top-percent'\] or a callable"),
    ({"max_new_tokens": 0}, r"max_new_tokens must be an integer >= 1, got 0"),
    ({"stopping": "fixed", "fixed_n": 8}, r"fixed_n=8 is above max_iterations=4, the cap"),
    ({"stopping": "often"}, r"stopping must be one of"),
    ({"token_index": 1.5}, r"token_index must be an integer >= 1"),
])
def test_ground_checks_arguments_before_any_model_pass(vlm, scene, kwargs, match):
    before = vlm.adapter.counter.copy()
    with pytest.raises(ValueError, match=match):
        egg.ground(vlm, scene, "what ?", **kwargs)
    after = vlm.adapter.counter
    assert (after.forward, after.backward, after.images_encoded) == (before.forward, before.backward,
                                                                      before.images_encoded)


def test_whole_floats_are_accepted_and_fixed_runs_within_the_cap(vlm, scene):
    g = egg.ground(vlm, scene, "what ?", num_layers=2.0, k=1.0, stopping="fixed", fixed_n=2, max_iterations=2)
    assert g.params["num_layers"] == 2 and isinstance(g.params["num_layers"], int) and 2 <= len(g.trace) <= 3


@pytest.mark.parametrize("sizes, match", [([], "window_sizes is empty"), ([float("inf")], "window size must be a finite"),
                                          ([-2], "window size must be a number > 0")])
def test_vicrop_window_sizes_are_checked(vlm, scene, sizes, match):
    with pytest.raises(ValueError, match=match):
        egg.vicrop(vlm, scene, "what ?", window_sizes=sizes)


# --------------------------------------------------------------------------- models


def test_a_checkpoint_with_a_missing_tensor_refuses_to_load(ref_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(ref_dir, bad)
    (f,) = list(bad.glob("*.safetensors"))
    sd = load_file(f)
    gone = sorted(sd)[3]
    del sd[gone]
    save_file(sd, f, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"1 missing keys \(e.g. .*{gone.split('.')[-2]}.*strict=False"):
        egg.load_model(bad)
    with pytest.warns(UserWarning, match="strict=False"):
        egg.load_model(bad, strict=False)


def test_model_path_mistakes_have_clear_messages(ref_dir):
    with pytest.raises(ValueError, match=r"is a file; load_model wants the checkpoint directory"):
        egg.load_model(ref_dir / "config.json")
    with pytest.raises(ValueError, match=r"neither a local directory nor a valid Hugging Face id"):
        egg.load_model("bad id!!")


def test_cli_checks_the_output_before_loading_and_prints_one_line(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    r = subprocess.run([sys.executable, "-m", "egg", "run", "--benchmark", "text", "--method", "base", "--n", "1",
                        "--out", str(blocker / "run.jsonl")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "is a file, not a directory" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "egg", "run", "--benchmark", "nosuch", "--method", "base", "--n", "1",
                        "--out", str(tmp_path / "x.jsonl")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "unknown family or benchmark 'nosuch'" in r.stderr and "Traceback" not in r.stderr
