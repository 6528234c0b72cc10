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

import time
from dataclasses import dataclass
from typing import Sequence

from ..adapters import Cost, as_adapter
from . import checks
from .relevance import relevance_batch
from .result import Grounding
from .zoom import Search, ground


def ground_options(**options) -> dict:
    """``ground``'s keyword options with its defaults filled in; unknown names raise."""
    return checks.with_defaults(ground, options, "ground")


def ground_batch(vlm, images: Sequence, questions: Sequence[str], *, batch_size: int = 8,
                 caches: Sequence | None = None, **options) -> list[Grounding]:
    """``egg.ground`` for each (image, question) pair, ``batch_size`` questions per model pass.

    images, questions: equal-length sequences (an image may repeat).
    caches: one ``EmbeddingCache`` per question, to share its image's encodings with other calls
        (a testbed running every method on one item); None gives each question a new one.
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
    caches = checks.one_per("caches", caches, len(images))
    opts = ground_options(**options)
    out: list[Grounding] = []
    for start in range(0, len(images), b):
        part = range(start, min(start + b, len(images)))
        searches = [Search(adapter, images[i], questions[i], cache=caches[i], **opts) for i in part]
        out.extend(_run(adapter, searches))
    return out


@dataclass
class _Row:
    """One question's part in a batched round: its prompt (None once it has stopped), the
    visual embeddings of the prompt's images (filled by ``_encode``) and the work charged so far."""

    search: Search
    prompt: object | None
    cost: Cost
    embeddings: object | None = None


def _run(adapter, searches: list[Search]) -> list[Grounding]:
    """Drive ``searches`` to the end together; their results, in order."""
    counter = adapter.counter
    o = searches[0].o
    while True:
        active = [s for s in searches if not s.done]
        if not active:
            break
        rows = []
        for s in active:
            c0, t0 = counter.copy(), time.perf_counter()
            prompt = s.next_prompt()
            rows.append(_Row(s, prompt, _since(counter, c0, t0)))
        _encode(adapter, rows)
        mapped = [r for r in rows if r.prompt is not None]
        share = Cost()
        if mapped:
            c0, t0 = counter.copy(), time.perf_counter()
            rels = relevance_batch(adapter, [r.prompt for r in mapped], o["objective"], o["token_index"],
                                   o["num_layers"], visual_embeds=[r.embeddings for r in mapped],
                                   keep_kv=not searches[0].answer_every)
            took = _since(counter, c0, t0)
            share = Cost(forward=o["token_index"], backward=1 if took.backward else 0,
                         wall_time=took.wall_time / len(mapped))
            for r, rel in zip(mapped, rels):
                r.search.take(r.prompt, rel)
        for r in rows:
            r.search.close_state(r.cost + share if r.prompt is not None else r.cost)

    waiting = []
    for s in searches:
        c0, t0 = counter.copy(), time.perf_counter()
        prep, kv = s.answer_prompt()
        if kv is not None:  # the chosen state's own pass: continue its cache, as ground does
            ids = adapter.generate_ids(prep, o["max_new_tokens"], kv=kv)
            s.set_answer(adapter.decode(ids), _since(counter, c0, t0))
        elif prep is not None:
            waiting.append(_Row(s, prep, _since(counter, c0, t0)))
    _encode(adapter, waiting)
    if waiting:
        c0, t0 = counter.copy(), time.perf_counter()
        ids = adapter.generate_batch([w.prompt for w in waiting], o["max_new_tokens"],
                                     [w.embeddings for w in waiting])
        took = _since(counter, c0, t0)
        for w, a in zip(waiting, ids):
            w.search.set_answer(adapter.decode(a), w.cost + Cost(forward=1, generated_tokens=len(a),
                                                                 wall_time=took.wall_time / len(waiting)))
    results = []
    for s in searches:
        total = Cost()
        for it in s.trace:
            total = total + it.cost
        results.append(s.grounding(total))
    return results


def _encode(adapter, rows: list[_Row]) -> None:
    """Fill in the visual embeddings of the rows' prompts, the round's new images encoded
    together; each row with a prompt is charged an equal share of the encoding."""
    todo = [r for r in rows if r.prompt is not None]
    if not todo:
        return
    c0, t0 = adapter.counter.copy(), time.perf_counter()
    embs = adapter.visual_embeddings_batch([r.prompt for r in todo], [r.search.cache for r in todo])
    took = _since(adapter.counter, c0, t0)
    for r, e, share in zip(todo, embs, took.split(len(todo))):
        r.embeddings, r.cost = e, r.cost + share


def _since(counter: Cost, c0: Cost, t0: float) -> Cost:
    c = counter.copy() - c0
    c.wall_time = time.perf_counter() - t0
    return c


__all__ = ["ground_batch", "ground_options"]
