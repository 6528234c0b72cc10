"""Another CPU's float noise in a figure leaves the committed figures and notebooks as they were;
a real change rewrites them."""
import base64
import io
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from egg.figures.base import save_figure, same_picture  # noqa: E402
from egg.reproduce import same_notebook, write_back  # noqa: E402


def _ramp(bump: float):
    """A small grey ramp with its first cell brightened by ``bump`` (0-1)."""
    fig, ax = plt.subplots(figsize=(1, 1))
    a = np.linspace(0.2, 0.8, 16).reshape(4, 4)
    a[0, 0] += bump
    ax.imshow(a, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    return fig


def _png(bump: float) -> bytes:
    fig, buf = _ramp(bump), io.BytesIO()
    fig.savefig(buf, format="png", dpi=40, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def test_same_picture_tells_float_noise_from_a_change():
    base, noise, change = _png(0.0), _png(3 / 255), _png(0.15)
    assert base != noise  # the noise is really there in the bytes
    assert same_picture(base, noise) and not same_picture(base, change)


def _save(tmp_path, bump: float) -> bytes:
    fig = _ramp(bump)
    save_figure(fig, "ramp", tmp_path, dpi=40)
    plt.close(fig)
    return (tmp_path / "ramp.png").read_bytes() + (tmp_path / "ramp.pdf").read_bytes()


def test_save_figure_keeps_the_files_of_the_same_figure(tmp_path):
    first = _save(tmp_path, 0.0)
    assert _save(tmp_path, 3 / 255) == first  # PNG and PDF both left as they were
    assert _save(tmp_path, 0.15) != first


def test_what_a_notebook_shows_after_save_figure_does_not_depend_on_the_files_on_disk(tmp_path):
    """A constrained layout moves a little with every draw (the notebook's own picture is one
    more), so `save_figure` draws every format whether it writes it or not: run 48's quickstart
    figure came out otherwise on a second `make reproduce`, its files already there."""
    from egg.figures.base import figure_png

    def shown():
        fig, ax = plt.subplots(1, 4, figsize=(14.4, 3.8), layout="constrained",
                               gridspec_kw={"width_ratios": [1.4, 1.4, 1, 1]})
        for a in ax:
            a.imshow(np.linspace(0, 1, 1200).reshape(30, 40))
            a.set_title("what letter is on the\nyellow sign ?")
            a.axis("off")
        fig.suptitle("crops the answer used", x=0.99, ha="right", fontsize=8)
        save_figure(fig, "layout", tmp_path, dpi=100)
        png = figure_png(fig, 100, bbox_inches="tight")
        plt.close(fig)
        return png

    assert not (tmp_path / "layout.pdf").exists()
    first = shown()  # writes both files
    assert shown() == first  # finds them unchanged, writes nothing, and shows the same picture


def _notebook(text: str, png: bytes) -> dict:
    out = {"output_type": "display_data", "metadata": {},
           "data": {"text/plain": [text], "image/png": base64.b64encode(png).decode() + "\n"}}
    return {"cells": [{"cell_type": "code", "source": ["plot()"], "metadata": {}, "outputs": [out]}],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def test_write_back_keeps_a_notebook_that_differs_by_float_noise(tmp_path):
    committed, executed = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    old = _notebook("<Figure>", _png(0.0))
    committed.write_text(json.dumps(old))
    assert same_notebook(old, _notebook("<Figure>", _png(3 / 255)))
    for nb, rewritten in [(_notebook("<Figure>", _png(3 / 255)), False), (_notebook("<Figure>", _png(0.15)), True),
                          (_notebook("<Figure 2>", _png(0.0)), True)]:
        committed.write_text(json.dumps(old))
        executed.write_text(json.dumps(nb))
        assert write_back(executed, committed) is rewritten
        assert (json.loads(committed.read_text()) == nb) is rewritten


def _noise_png(seed: int, bump: float) -> bytes:
    """A 96 x 96 noise picture (long base64), with every pixel brightened by ``bump`` (0-1)."""
    a = np.random.default_rng(seed).uniform(0.2, 0.8, (96, 96)) + bump
    buf = io.BytesIO()
    plt.imsave(buf, a, cmap="gray", vmin=0, vmax=1, format="png", metadata={"Software": None})
    return buf.getvalue()


def test_pictures_are_compared_before_the_sanitisers_touch_their_base64():
    """The timing sanitiser (digits then "s" at a word boundary) also matches inside base64: the
    pictures are decoded from the notebook as it is, not from its sanitised text."""
    from egg.reproduce import _sanitizers

    rx = _sanitizers()[0][0]
    seed = next(s for s in range(50) if rx.search(base64.b64encode(_noise_png(s, 0.0)).decode()))
    old = _notebook("<Figure>", _noise_png(seed, 0.0))
    assert same_notebook(old, _notebook("<Figure>", _noise_png(seed, 2 / 255)))
    assert not same_notebook(old, _notebook("<Figure>", _noise_png(seed, 0.15)))


def test_lanes_keep_the_shared_run_together_in_order_and_leave_the_timed_notebook_out():
    from egg.reproduce import SHARED_RUN, TIMED, lanes, notebooks

    nbs = notebooks()
    two = lanes(nbs, 2)
    assert len(two) == 2
    flat = [nb for lane in two for nb in lane]
    assert sorted(flat) == [nb for nb in nbs if nb.name[:2] not in TIMED]  # each once, the timed one after
    shared = [lane for lane in two if any(nb.name[:2] in SHARED_RUN for nb in lane)]
    assert len(shared) == 1
    keys = [nb.name[:2] for nb in shared[0] if nb.name[:2] in SHARED_RUN]
    assert keys == sorted(keys) == [nb.name[:2] for nb in nbs if nb.name[:2] in SHARED_RUN]
    assert any(nb.name.startswith("09") for nb in two[0]) != any(nb.name.startswith("09") for nb in two[1])
    assert lanes(nbs, 1) == [[nb for nb in nbs if nb.name[:2] not in TIMED]]
    assert lanes(nbs[:1], 4) == [nbs[:1]]  # no empty lanes


@pytest.mark.slow
def test_two_lanes_run_their_notebooks_at_once_and_a_failure_is_reported(tmp_path, capsys):
    """The real papermill run, two kernels at once: executed copies under --out; a bad model fails
    both lanes, and the run says which notebooks failed."""
    from egg.api import REFERENCE_DIR
    from egg.reproduce import main

    assert main(["--only", "00,07", "--jobs", "2", "--model", str(REFERENCE_DIR), "--out", str(tmp_path / "ok")]) == 0
    said = capsys.readouterr().out
    assert "2 notebooks in 2 lanes of 1 thread(s)" in said
    assert (tmp_path / "ok" / "00_quickstart.ipynb").exists() and (tmp_path / "ok" / "07_explorer.ipynb").exists()
    assert main(["--only", "00,07", "--jobs", "2", "--model", str(tmp_path / "no-model"),
                 "--out", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert "FAILED: 00_quickstart.ipynb, 07_explorer.ipynb" in err
