"""``ground`` for many questions at once: B questions per forward and backward pass.

Each question keeps its own ``Search`` (its crops, its trace, its stopping rule, its visual
embedding cache); at every round the questions still running are mapped together by
``relevance_batch`` (left-padded and masked), and at the end the chosen states' answers
are generated in one padded ``generate`` -- except where the chosen state is the last one
mapped, whose answer continues that pass's key/value cache, as ``ground``'s does. Questions stop on their own rules, so a batch
shrinks as it goes. Every result equals ``ground`` of that question alone: the same
answers, maps within float tolerance, and so the same boxes unless two candidates tie to
within that tolerance (tested in ``tests/test_batch.py``).

On a GPU this is what makes thousands of questions affordable; on one CPU thread it is
still faster (``python -m egg cost`` prints the throughput ratio).
"""
from __future__ import annotations

import inspect
import time
from typing import Sequence

from ..adapters import Cost, as_adapter
from . import checks
from .relevance import relevance_batch
from .result import Grounding
from .zoom import Search, ground


def ground_options(**options) -> dict:
    """``ground``'s keyword options with its defaults filled in; unknown names raise."""
    params = inspect.signature(ground).parameters
    defaults = {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"ground has no option(s) {unknown}; valid: {sorted(defaults)}")
    return {**defaults, **options}


def ground_batch(vlm, images: Sequence, questions: Sequence[str], *, batch_size: int = 8,
                 **options) -> list[Grounding]:
    """``egg.ground`` for each (image, question) pair, ``batch_size`` questions per model pass.

    images, questions: equal-length sequences (an image may repeat).
    options: ``ground``'s keyword options, shared by every question.
    Returns one ``Grounding`` per question, in order. Each one's ``cost`` counts the passes
    it took part in as a single call would (so costs stay comparable) and its share of the
    batch's wall time.
    """
    adapter = as_adapter(vlm)
    images, questions = list(images), list(questions)
    if len(images) != len(questions):
        raise ValueError(f"ground_batch needs one question per image, got {len(images)} images and "
                         f"{len(questions)} questions")
    b = checks.integer("batch_size", batch_size, lo=1)
    opts = ground_options(**options)
    out: list[Grounding] = []
    for start in range(0, len(images), b):
        searches = [Search(adapter, im, q, **opts) for im, q in zip(images[start:start + b],
                                                                   questions[start:start + b])]
        out.extend(_run(adapter, searches))
    return out


def _run(adapter, searches: list[Search]) -> list[Grounding]:
    """Drive ``searches`` to the end together; their results, in order."""
    counter = adapter.counter
    o = searches[0].o
    while True:
        active = [s for s in searches if not s.done]
        if not active:
            break
        rows = []  # (search, prompt or None, its own preparation cost)
        for s in active:
            c0, t0 = counter.copy(), time.perf_counter()
            rows.append((s, s.next_prompt(), None, _since(counter, c0, t0)))
        rows = _encode(adapter, rows)
        mapped = [r for r in rows if r[1] is not None]
        share = Cost()
        if mapped:
            c0, t0 = counter.copy(), time.perf_counter()
            rels = relevance_batch(adapter, [r[1] for r in mapped], o["objective"], o["token_index"],
                                   o["num_layers"], visual_embeds=[r[2] for r in mapped],
                                   keep_kv=not searches[0].answer_every)
            took = _since(counter, c0, t0)
            share = Cost(forward=o["token_index"], backward=1 if took.backward else 0,
                         wall_time=took.wall_time / len(mapped))
            for (s, prep, _, _), rel in zip(mapped, rels):
                s.take(prep, rel)
        for s, prep, _, own in rows:
            s.close_state(own + share if prep is not None else own)

    waiting = []
    for s in searches:
        c0, t0 = counter.copy(), time.perf_counter()
        prep, kv = s.answer_prompt()
        if kv is not None:  # the chosen state's own pass: continue its cache, as ground does
            ids = adapter.generate_ids(prep, o["max_new_tokens"], kv=kv)
            s.set_answer(adapter.decode(ids), _since(counter, c0, t0))
        elif prep is not None:
            waiting.append((s, prep, None, _since(counter, c0, t0)))
    waiting = _encode(adapter, waiting)
    if waiting:
        c0, t0 = counter.copy(), time.perf_counter()
        ids = adapter.generate_batch([w[1] for w in waiting], o["max_new_tokens"], [w[2] for w in waiting])
        took = _since(counter, c0, t0)
        for (s, _, _, own), a in zip(waiting, ids):
            s.set_answer(adapter.decode(a), own + Cost(forward=1, generated_tokens=len(a),
                                                       wall_time=took.wall_time / len(waiting)))
    results = []
    for s in searches:
        total = Cost()
        for it in s.trace:
            total = total + it.cost
        results.append(s.grounding(total))
    return results


def _encode(adapter, rows: list) -> list:
    """The rows (search, prompt or None, None, cost) with the visual embeddings of their
    prompts filled in, the round's new images encoded together; each row with a prompt is
    charged an equal share of the encoding."""
    todo = [i for i, r in enumerate(rows) if r[1] is not None]
    if not todo:
        return rows
    c0, t0 = adapter.counter.copy(), time.perf_counter()
    embs = adapter.visual_embeddings_batch([rows[i][1] for i in todo], [rows[i][0].cache for i in todo])
    took = _since(adapter.counter, c0, t0)
    n, out = len(todo), list(rows)
    for j, (i, e) in enumerate(zip(todo, embs)):
        share = Cost(images_encoded=took.images_encoded // n + (1 if j < took.images_encoded % n else 0),
                     wall_time=took.wall_time / n)
        out[i] = (rows[i][0], rows[i][1], e, rows[i][3] + share)
    return out


def _since(counter: Cost, c0: Cost, t0: float) -> Cost:
    c = counter.copy() - c0
    c.wall_time = time.perf_counter() - t0
    return c


__all__ = ["ground_batch", "ground_options"]
