"""Shared fixtures: the reference VLM, random-init (real transformers classes, no mocks).

Built once per session; the trained weights (data/reference) are not needed by the tests.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw


@pytest.fixture(scope="session")
def ref_cfg():
    from egg.reference.build import ReferenceConfig

    return ReferenceConfig()


@pytest.fixture(scope="session")
def ref_processor(ref_cfg):
    from egg.reference.build import build_processor

    return build_processor(ref_cfg)


@pytest.fixture(scope="session")
def ref_model(ref_cfg, ref_processor):
    from egg.reference.build import build_model

    model = build_model(ref_cfg, ref_processor.tokenizer, seed=0)
    model.eval()
    return model


@pytest.fixture(scope="session")
def vlm(ref_model, ref_processor):
    """The random-init reference model as an egg VLM (model + processor + adapter)."""
    from egg.adapters import VLM

    return VLM.from_model(ref_model, ref_processor, source="random-init reference")


@pytest.fixture(scope="session")
def adapter(vlm):
    return vlm.adapter


@pytest.fixture(scope="session")
def ref_dir(tmp_path_factory, ref_model, ref_processor):
    """The random-init reference model saved with save_pretrained: what load_model and the CLIs read."""
    d = tmp_path_factory.mktemp("refmodel")
    ref_model.save_pretrained(d)
    ref_processor.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def scene() -> Image.Image:
    """A non-square test image with a few coloured shapes and a small word."""
    img = Image.new("RGB", (240, 160), (230, 225, 210))
    d = ImageDraw.Draw(img)
    d.rectangle([20, 20, 70, 60], fill=(220, 30, 30))
    d.ellipse([150, 90, 200, 140], fill=(30, 70, 230))
    d.text((100, 30), "cat", fill=(0, 0, 0))
    return img


@pytest.fixture(scope="session")
def question() -> str:
    return "what word is on the red sign ?"


@pytest.fixture
def rng():
    return np.random.default_rng(0)
