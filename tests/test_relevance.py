"""The entropy-gradient map: gradient placement, finite differences, layers, token index."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from egg.method.objectives import OBJECTIVES, entropy, get_objective, nucleus_entropy
from egg.method.relevance import relevance, relevance_maps


@pytest.fixture(scope="module")
def prep(adapter, scene, question):
    return adapter.prepare([scene, scene.crop((10, 10, 130, 90))], question)


def test_maps_shapes_and_stats(adapter, ref_model, prep):
    res = relevance(adapter, prep)
    assert len(res.maps) == 2
    for m in res.maps:
        assert m.shape == (8, 8) and m.dtype == np.float64
        assert np.isfinite(m).all() and (m >= 0).all() and m.max() > 0
    assert not res.degenerate
    with torch.no_grad():
        logits = ref_model(**prep.inputs).logits[0, -1]
    p = torch.softmax(logits.double(), -1)
    assert res.entropy == pytest.approx(float(-(p * p.log()).sum()), rel=1e-4)
    assert res.max_prob == pytest.approx(float(p.max()), rel=1e-4)
    assert res.token_id == int(p.argmax())
    assert res.objective == pytest.approx(res.entropy, rel=1e-4)


def test_gradient_only_on_visual_tokens(adapter, ref_model, prep):
    """Our leaf is exactly the visual rows of the input embeddings: its gradient equals the
    full-embedding gradient there; text rows are never part of the leaf; no parameter grads."""
    res = relevance(adapter, prep, keep_gradient=True)
    g = res.gradient
    assert g.shape == (prep.n_visual, ref_model.config.text_config.hidden_size)
    assert (g.norm(dim=-1) > 0).all()
    vis = adapter.visual_embeddings(prep)
    full = adapter.inputs_embeds(prep, vis).detach().requires_grad_(True)
    out = ref_model.model.language_model(inputs_embeds=full, attention_mask=prep.attention_mask)
    loss = entropy(ref_model.lm_head(out.last_hidden_state[0, -1]))
    (gfull,) = torch.autograd.grad(loss, full)
    torch.testing.assert_close(gfull[0, prep.visual_positions], g, rtol=1e-4, atol=1e-9)
    assert all(p.grad is None and not p.requires_grad for p in ref_model.parameters())
    # the map is the L2 norm of the gradient rows, laid out per grid
    for grid, m in zip(prep.grids, res.maps):
        np.testing.assert_allclose(m, g.norm(dim=-1).double().numpy()[prep.visual_rows(grid)], rtol=1e-6)


def test_gradient_matches_finite_differences(ref_cfg, ref_processor, scene, question):
    """Autograd vs central differences on a float64 copy of the reference-sized model.

    transformers' RMSNorm computes in float32 even for a float64 model, so tiny steps
    drown in rounding; steps of 3e-3 along unit directions keep both rounding and
    truncation errors ~1e-5 relative. Checked: the map value of a token equals the
    directional derivative along its own gradient (the definition of the L2 norm), and
    the whole gradient matches along random directions.
    """
    from egg.adapters import adapter_for
    from egg.reference.build import build_model

    model = build_model(ref_cfg, ref_processor.tokenizer, seed=1).double().eval()
    a = adapter_for(model, ref_processor)
    prep = a.prepare([scene], question)
    vis = a.visual_embeddings(prep).double()
    res = relevance(a, prep, visual_embeds=vis, keep_gradient=True)
    g = res.gradient
    h = 3e-3

    def fd(direction: torch.Tensor) -> float:
        with torch.no_grad():
            up = entropy(a.forward_from_embeddings(prep, vis + h * direction))
            down = entropy(a.forward_from_embeddings(prep, vis - h * direction))
        return float(up - down) / (2 * h)

    flat = res.maps[0].ravel()  # single image: grid rows are the visual rows in order
    order = np.argsort(flat)[::-1]
    for t in list(order[:2]) + [int(order[len(order) // 2])]:
        u = torch.zeros_like(vis)
        u[t] = g[t] / g[t].norm()
        assert fd(u) == pytest.approx(flat[t], rel=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        v = torch.randn(vis.shape, generator=gen, dtype=torch.float64)
        v /= v.norm()
        assert fd(v) == pytest.approx(float((g * v).sum()), abs=2e-3 * float(g.norm()))


def test_layer_truncation(adapter, prep):
    full = relevance_maps(adapter, prep)
    same = relevance_maps(adapter, prep, num_layers=adapter.num_layers)
    one = relevance_maps(adapter, prep, num_layers=1)
    for a, b in zip(full, same):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)
    assert not np.allclose(full[0], one[0])
    assert all(np.isfinite(m).all() and m.max() > 0 for m in one)


def test_token_index_two(adapter, prep):
    r1 = relevance(adapter, prep, token_index=1)
    r2 = relevance(adapter, prep, token_index=2)
    assert r2.prefix == [r1.token_id]  # the first answer token, decoded greedily
    first = adapter.generate_ids(prep, max_new_tokens=1)
    assert r2.prefix == first[:1]
    assert all(m.shape == (8, 8) and np.isfinite(m).all() for m in r2.maps)
    assert not np.allclose(r1.maps[0], r2.maps[0])
    with pytest.raises(ValueError):
        relevance(adapter, prep, token_index=0)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_gives_a_map(adapter, prep, name):
    res = relevance(adapter, prep, objective=name)
    assert res.maps[0].max() > 0 and not res.degenerate


def test_kl_to_uniform_map_equals_entropy_map(adapter, prep):
    a = relevance_maps(adapter, prep, "entropy")
    b = relevance_maps(adapter, prep, "kl_to_uniform")
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5)


def test_entropy_gradient_is_exact_where_the_model_is_sure():
    """At an entropy of 3.5e-7 nats (the token after a one-token answer), the gradient on the top
    logit must be the closed form -p (log p + H), not float32 rounding: computed in float32 it is
    7% off, enough to move a map's boxes between CPUs (CHANGELOG, stop 63)."""
    z = torch.randn(40, generator=torch.Generator().manual_seed(0)) + 4.0
    z[7] = 26.0  # float32 logits, as a model gives them
    lp = torch.log_softmax(z.double(), -1)
    want = -lp.exp() * (lp + float(-(lp.exp() * lp).sum()))
    for fn in (entropy, OBJECTIVES["kl_to_uniform"]):
        x = z.clone().requires_grad_(True)
        fn(x).backward()
        np.testing.assert_allclose(x.grad.abs().double(), want.abs(), rtol=1e-6)
    y = z.clone().requires_grad_(True)
    lp32 = torch.log_softmax(y, -1)  # the float32 entropy, as before stop 63
    (-(lp32.exp() * lp32).sum()).backward()
    assert abs(float(y.grad[7]) / float(want[7]) - 1) > 0.01


def test_objectives_on_batched_and_degenerate_logits():
    x = torch.randn(3, 40)
    for fn in OBJECTIVES.values():
        v = fn(x)
        assert v.dim() == 0 and torch.isfinite(v)
    assert float(nucleus_entropy(x[0], p=1.0)) == pytest.approx(float(entropy(x[0])), rel=1e-5)
    peaked = torch.full((40,), -1e4)
    peaked[3] = 0.0
    assert float(entropy(peaked)) == pytest.approx(0.0, abs=1e-6)
    assert float(nucleus_entropy(peaked)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        get_objective("nope")
    with pytest.raises(ValueError):
        entropy(torch.zeros(2, 3, 4))


def test_objective_that_ignores_the_image_is_degenerate(adapter, prep):
    res = relevance(adapter, prep, objective=lambda logits: torch.tensor(1.0))
    assert res.degenerate and all((m == 0).all() for m in res.maps)
    res = relevance(adapter, prep, objective=lambda logits: 0.0 * logits.sum())
    assert res.degenerate


def test_deterministic(adapter, prep):
    a = relevance_maps(adapter, prep)
    b = relevance_maps(adapter, prep)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
