"""The paper's real benchmarks (Table 1), as small declarative records, and their loader.

>>> from egg import datasets as benchmarks
>>> benchmarks.names()
['textvqa', 'textvqa-boxes', 'vstar', 'docvqa', 'pope', 'pope-random', ...]
>>> items = benchmarks.load("docvqa", n=10)                       # from the Hugging Face cache
>>> items = benchmarks.load("docvqa", n=10, path="/data/DocVQA")   # or a local copy
>>> benchmarks.score("docvqa", "1984", items[0])

Each benchmark is a :class:`Benchmark`: Hub dataset id, config, split, the fields holding
the question / answer / image / id, the prompt suffix (the short-answer prompts of
lmms-eval's task yamls, which the paper uses) and the metric. ``load`` returns
``egg.bench.Item`` objects (the same type the procedural benchmark yields), so every
method and ``egg.runner`` work on both. ``item.question`` is the full prompt given to
the model; the dataset's own question is ``item.meta["raw_question"]``.

Datasets are read with the ``datasets`` library (``pip install egg[data]``): from the
Hugging Face cache (downloaded first when the Hub is reachable and not disabled with
HF_HUB_OFFLINE), or from ``path``: a local snapshot of the dataset repository
(``huggingface-cli download <id> --repo-type dataset --local-dir <dir>``), a directory of
parquet / jsonl files, a single such file, or a ``save_to_disk`` directory.
Dataset ids were checked against lmms-eval 0.7.3's task yamls (which point at the
``lmms-lab-encoder/*`` mirrors of the same ``lmms-lab/*`` repositories).
"""
from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import metrics
from .synthetic.core import Item

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
MC_LETTER = "\nAnswer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: where its data is, how an item is read, how it is scored.

    dataset/config/split: the Hugging Face dataset id, its config (None: default) and split.
    question/answer/image/id: field names. ``answer`` may hold a list (VQA, ANLS) or a string.
    image: a field with a decoded image, or a path relative to the dataset directory (V*).
    prompt: appended to the question (the paper's short-answer prompts).
    metric: "vqa_accuracy" | "anls" | "multiple_choice" | "exact_match" | "pope" | "mc_or_exact".
    family: the procedural family that stands in for it (``egg.bench``).
    boxes: field with ground-truth evidence boxes ([x, y, w, h] pixels), if any.
    images_config / image_key: GQA keeps images in a second config, joined on ``image_key``.
    lmms_task: the lmms-eval task name that evaluates the same data.
    """

    name: str
    title: str
    dataset: str
    config: str | None
    split: str
    question: str
    answer: str
    image: str
    metric: str
    family: str
    prompt: str = SHORT_ANSWER
    id: str | None = None
    boxes: str | None = None
    category: str | None = None
    images_config: str | None = None
    image_key: str | None = None
    lmms_task: str | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def download_hint(self) -> str:
        cfg = f", config {self.config!r}" if self.config else ""
        return (f"{self.title} needs the Hugging Face dataset {self.dataset!r}{cfg}, split {self.split!r}. "
                f"Download it on a machine with network access: `huggingface-cli download {self.dataset} "
                f"--repo-type dataset --local-dir <dir>` (or run once online so it lands in the Hugging Face "
                f"cache), then pass the directory as benchmarks.load(..., path='<dir>') / "
                f"egg.runner.run(..., data='<dir>') / `python -m egg run ... --data <dir>`.")


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("textvqa", "TextVQA val", "lmms-lab/textvqa", None, "validation", "question", "answers", "image",
              "vqa_accuracy", "text", id="question_id", lmms_task="textvqa_val"),
    Benchmark("textvqa-boxes", "TextVQA val with GT evidence boxes", "jrzhang/TextVQA_GT_bbox", None, "train",
              "question", "answer", "image", "vqa_accuracy", "text", id="dataset_id", boxes="bbox",
              notes="4,370 TextVQA val questions with one answer box each ([x, y, w, h] pixels); for the IoU study. "
                    "Its answer lists are the 10 TextVQA annotations."),
    Benchmark("vstar", "V* Bench", "craigwu/vstar_bench", None, "test", "text", "label", "image",
              "multiple_choice", "vstar", prompt=MC_LETTER, id="question_id", category="category",
              lmms_task="vstar_bench",
              notes="test_questions.jsonl; 'image' is a path inside the dataset repository; options are in "
                    "the text as '(A) ...'. Boxes come from the per-image json next to each image."),
    Benchmark("docvqa", "DocVQA val", "lmms-lab/DocVQA", "DocVQA", "validation", "question", "answers", "image",
              "anls", "doc", id="questionId", lmms_task="docvqa_val"),
    Benchmark("pope", "POPE (all three splits)", "lmms-lab/POPE", None, "test", "question", "answer", "image",
              "pope", "pope", id="question_id", category="category", lmms_task="pope"),
    Benchmark("pope-random", "POPE random", "lmms-lab/POPE", "Full", "random", "question", "answer", "image",
              "pope", "pope", id="question_id", category="category", lmms_task="pope_random"),
    Benchmark("pope-popular", "POPE popular", "lmms-lab/POPE", "Full", "popular", "question", "answer", "image",
              "pope", "pope", id="question_id", category="category", lmms_task="pope_pop"),
    Benchmark("pope-adversarial", "POPE adversarial", "lmms-lab/POPE", "Full", "adversarial", "question", "answer",
              "image", "pope", "pope", id="question_id", category="category", lmms_task="pope_adv"),
    Benchmark("infovqa", "InfographicVQA val", "lmms-lab/DocVQA", "InfographicVQA", "validation", "question",
              "answers", "image", "anls", "info", id="questionId", lmms_task="infovqa_val"),
    Benchmark("gqa", "GQA testdev-balanced", "lmms-lab/GQA", "testdev_balanced_instructions", "testdev", "question",
              "answer", "image", "exact_match", "gqa", id="id", images_config="testdev_balanced_images",
              image_key="imageId", lmms_task="gqa",
              notes="Images are in config testdev_balanced_images (fields id, image), joined on imageId."),
    Benchmark("realworldqa", "RealWorldQA", "lmms-lab/RealWorldQA", None, "test", "question", "answer", "image",
              "mc_or_exact", "rwqa", prompt="", lmms_task="realworldqa",
              notes="Questions carry their options ('A. ...') and instruction; a few answers are open-ended."),
]}

#: Benchmark names in Table 1's column order (POPE: the three splits are reported together).
TABLE1 = ["textvqa", "vstar", "docvqa", "pope", "infovqa", "gqa", "realworldqa"]


def names() -> list[str]:
    return list(BENCHMARKS)


def get(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {names()}") from None


# --------------------------------------------------------------------------- loading


def _datasets():
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("loading real benchmarks needs the `datasets` package: pip install 'egg[data]' "
                          "(or pip install datasets)") from e
    return datasets


_DATA_EXT = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}


def _files_in(root: Path, config: str | None, split: str) -> list[str]:
    """Data files of (config, split) in a local dataset directory, Hub layouts first."""
    dirs = [root / config, root / "data" / config] if config else []
    dirs += [root / "data", root]
    for d in dirs:
        if not d.is_dir():
            continue
        for ext in _DATA_EXT:
            hits = sorted(glob.glob(str(d / f"{split}-*{ext}")) + glob.glob(str(d / f"{split}{ext}"))
                          + glob.glob(str(d / split / f"*{ext}")))
            if hits:
                return hits
    # a directory holding only one split's files (e.g. V*'s test_questions.jsonl)
    for d in ([root / config] if config else []) + [root]:
        if d.is_dir():
            for ext in _DATA_EXT:
                hits = sorted(glob.glob(str(d / f"*{ext}")))
                hits = [h for h in hits if not h.endswith(("dataset_info.json", "state.json", "dataset_dict.json"))]
                if hits:
                    return hits
    return []


def _load_local(path: Path, config: str | None, split: str):
    ds_lib = _datasets()
    if path.is_file():
        kind = _DATA_EXT.get(path.suffix.lower())
        if kind is None:
            raise ValueError(f"cannot read {str(path)!r}: expected one of {sorted(_DATA_EXT)}")
        return ds_lib.load_dataset(kind, data_files=str(path), split="train")
    if not path.is_dir():
        raise FileNotFoundError(f"benchmark data path not found: {str(path)!r}")
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        d = ds_lib.load_from_disk(str(path))
        return d[split] if isinstance(d, ds_lib.DatasetDict) else d
    files = _files_in(path, config, split)
    if not files:
        raise FileNotFoundError(f"no data files for config {config!r}, split {split!r} in {str(path)!r} "
                                f"(looked for {config or '.'}/{split}-*.parquet|jsonl|json|csv and data/).")
    kind = _DATA_EXT[Path(files[0]).suffix.lower()]
    return ds_lib.load_dataset(kind, data_files=files, split="train")


def _load_hub(b: Benchmark, config: str | None, cache_dir=None):
    ds_lib = _datasets()
    try:
        return ds_lib.load_dataset(b.dataset, config, split=b.split, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 - offline, not cached, gated, ...
        offline = any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
                      for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        why = "it is not in the Hugging Face cache and the Hub is disabled (HF_HUB_OFFLINE)" if offline else \
            f"loading it failed ({type(e).__name__}: {str(e)[:300]})"
        raise FileNotFoundError(f"benchmark {b.name!r}: {why}. {b.download_hint()}") from e


def _open_image(value, root: Path | None):
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):  # undecoded datasets Image: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            import io

            return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
        value = value.get("path")
    if isinstance(value, str):
        p = Path(value)
        if not p.is_absolute() and root is not None:
            p = root / p
        if not p.is_file():
            raise FileNotFoundError(f"image file not found: {str(p)!r} (pass the dataset directory as path=)")
        with Image.open(p) as im:
            return im.convert("RGB")
    raise TypeError(f"cannot read an image from {type(value).__name__}")


_PAREN_OPTS = re.compile(r"\(([A-H])\)\s*([^\n]*?)\s*(?=\([A-H]\)|\n|$)")
_DOT_OPTS = re.compile(r"^\s*([A-H])\.\s+(.*?)\s*$", re.M)


def _vstar_prompt(text: str) -> tuple[str, list[str]]:
    """lmms-eval's vstar formatting: stem, then "A. option" lines, then the letter prompt."""
    opts = [o.strip() for _, o in _PAREN_OPTS.findall(text)]
    stem = text.split("(A)")[0].strip() if opts else text.strip()
    body = stem + ("\n" + "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(opts)) if opts else "")
    return body, opts


def _vstar_boxes(image_path: Path) -> list:
    """V*'s per-image annotation (<image>.json: {"bbox": [[x, y, w, h], ...], ...}) as xyxy boxes."""
    ann = image_path.with_suffix(".json")
    if not ann.is_file():
        return []
    try:
        d = json.loads(ann.read_text())
    except ValueError:
        return []
    return [_xywh_to_xyxy(b) for b in d.get("bbox", []) if len(b) == 4]


def _xywh_to_xyxy(b) -> tuple:
    x, y, w, h = (float(v) for v in b)
    return (x, y, x + w, y + h)


def _answers(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(a) for a in value]
    return [str(value)]


def to_item(b: Benchmark, row: dict, index: int, root: Path | None = None, image=None) -> Item:
    """An ``egg.bench.Item`` from one dataset row."""
    raw_q = str(row[b.question])
    img_value = image if image is not None else row[b.image]
    img = _open_image(img_value, root)
    options: list[str] = []
    boxes: list = []
    if b.name == "vstar":
        body, options = _vstar_prompt(raw_q)
        question = body + b.prompt
        if isinstance(img_value, str) and root is not None:
            boxes = _vstar_boxes(root / img_value)
    elif b.metric == "mc_or_exact":
        options = [o for _, o in _DOT_OPTS.findall(raw_q)]
        question = raw_q.strip() + b.prompt
    else:
        question = (raw_q.strip() if b.metric == "pope" else raw_q) + b.prompt
        if b.name.startswith("textvqa"):
            question = raw_q.capitalize() + b.prompt  # lmms-eval's textvqa_doc_to_text
    if b.boxes and row.get(b.boxes) is not None:
        bb = row[b.boxes]
        bb = [bb] if bb and not isinstance(bb[0], (list, tuple)) else bb
        boxes = [_xywh_to_xyxy(x) for x in bb]
    meta = {"benchmark": b.name, "index": int(index), "split": b.split, "seed": 0, "raw_question": raw_q,
            "id": str(row[b.id]) if b.id and row.get(b.id) is not None else str(index)}
    if b.category and row.get(b.category) is not None:
        meta["category"] = str(row[b.category])
    return Item(image=img, question=question, answers=_answers(row[b.answer]), boxes=boxes, family=b.family,
                options=options, meta=meta)


class BenchmarkData:
    """A loaded benchmark: ``len()``, ``[i]`` -> Item (decoded lazily, one at a time)."""

    def __init__(self, b: Benchmark, rows, root: Path | None, images: dict | None = None):
        self.benchmark, self.rows, self.root, self.images = b, rows, root, images

    def __len__(self) -> int:
        return len(self.rows)

    def item_id(self, i: int) -> str:
        """Item ``i``'s id without decoding its image (for records of items that fail)."""
        b = self.benchmark
        try:
            v = self.rows[b.id][int(i)] if b.id else None
        except Exception:  # noqa: BLE001 - an id is a courtesy; the index always works
            v = None
        return str(v) if v is not None else str(i)

    def __getitem__(self, i: int) -> Item:
        if not 0 <= i < len(self):
            raise IndexError(i)
        row = self.rows[int(i)]
        image = None
        if self.images is not None:
            key = row[self.benchmark.image_key]
            if key not in self.images:
                raise KeyError(f"{self.benchmark.name}: no image {key!r} in {self.benchmark.images_config}")
            image = self.images[key]
        return to_item(self.benchmark, row, i, self.root, image)


def open_benchmark(name: str, path=None, config: str | None = None, cache_dir=None) -> BenchmarkData:
    """The benchmark's rows (not yet decoded). See :func:`load`."""
    b = get(name)
    cfg = b.config if config is None else config
    root: Path | None = None
    if path is not None:
        p = Path(os.path.expanduser(str(path)))
        rows = _load_local(p, cfg, b.split)
        root = p if p.is_dir() else p.parent
    else:
        rows = _load_hub(b, cfg, cache_dir)
        if b.name == "vstar":  # images are files of the dataset repository
            root = _hub_snapshot(b)
    images = None
    if b.images_config:
        img_rows = _load_local(root, b.images_config, b.split) if root is not None and path is not None \
            else _load_hub(b, b.images_config, cache_dir)
        images = {r["id"]: r["image"] for r in img_rows}
    return BenchmarkData(b, rows, root, images)


def _hub_snapshot(b: Benchmark) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(b.dataset, repo_type="dataset"))
    except Exception as e:  # noqa: BLE001
        raise FileNotFoundError(f"benchmark {b.name!r}: cannot find the dataset repository files "
                                f"({type(e).__name__}). {b.download_hint()}") from e


def load(name: str, n: int | None = None, path=None, start: int = 0, config: str | None = None,
         cache_dir=None) -> list[Item]:
    """Items ``start .. start+n-1`` of a real benchmark (n=None: all) as ``egg.bench.Item``.

    path: a local copy (see the module docstring); None: the Hugging Face cache / Hub.
    Raises FileNotFoundError naming the dataset to download and the parameter to point at
    it when the data is neither cached nor at ``path``.
    """
    data = open_benchmark(name, path=path, config=config, cache_dir=cache_dir)
    stop = len(data) if n is None else min(len(data), start + int(n))
    return [data[i] for i in range(start, stop)]


# --------------------------------------------------------------------------- scoring


def score(name: str, prediction: str, item: Item) -> float:
    """Per-item score in [0, 1] with the benchmark's metric (``egg.metrics``, lmms-eval's
    conventions). POPE: per-item accuracy (aggregate with ``metrics.pope``)."""
    b = get(name)
    m = b.metric
    if m == "pope":
        return float(metrics.parse_yes_no(prediction) == item.answers[0].lower().strip())
    if m == "mc_or_exact":
        ans = item.answers[0].strip()
        if ans.upper() in ("A", "B", "C", "D") and item.options:
            return metrics.multiple_choice(prediction, item.options, ans)
        return float(prediction.lower().strip().rstrip(".") == ans.lower())
    return metrics.item_score(m, prediction, item)


def aggregate(name: str, predictions: Sequence[str], items: Sequence[Item]) -> dict[str, Any]:
    """The benchmark's headline numbers (fractions): {"score": mean per-item score}, plus
    POPE's precision / recall / F1."""
    scores = [score(name, p, it) for p, it in zip(predictions, items)]
    out: dict[str, Any] = {"score": sum(scores) / len(scores) if scores else float("nan"), "n": len(scores)}
    if get(name).metric == "pope" and items:
        out.update(metrics.pope(list(predictions), [it.answers[0] for it in items]))
    return out


__all__ = ["Benchmark", "BENCHMARKS", "TABLE1", "BenchmarkData", "names", "get", "load", "open_benchmark",
           "to_item", "score", "aggregate", "SHORT_ANSWER", "MC_LETTER"]


# --------------------------------------------------------------------------- fixtures


def write_fixture(name: str, root, n: int = 4, seed: int = 0) -> Path:
    """Write a tiny stand-in for a real benchmark's dataset under ``root``, in that
    dataset's own file layout and field names, with items rendered by the procedural
    benchmark (its matching family). ``load(name, path=root)`` and lmms-eval tasks read it
    like the real thing (tests and dry runs without the real data). Returns ``root``."""
    from . import bench

    ds_lib = _datasets()
    b = get(name)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    items = [bench.item(b.family, "test", i, seed) for i in range(n)]

    def stem(q: str) -> str:
        return q.split(" (A)")[0].strip()

    def save(rows: dict, sub: str, split: str):
        d = root / sub if sub else root
        d.mkdir(parents=True, exist_ok=True)
        ds = ds_lib.Dataset.from_dict(rows)
        if "image" in rows:
            ds = ds.cast_column("image", ds_lib.Image())
        ds.to_parquet(str(d / f"{split}-00000-of-00001.parquet"))

    imgs = [it.image for it in items]
    if name == "textvqa":
        save({"image_id": [f"img{i}" for i in range(n)], "question_id": list(range(n)),
              "question": [it.question for it in items], "image": imgs,
              "image_width": [im.size[0] for im in imgs], "image_height": [im.size[1] for im in imgs],
              "answers": [(list(it.answers) * 10)[:10] for it in items],
              "ocr_tokens": [[] for _ in items], "set_name": ["val"] * n}, "data", "validation")
    elif name == "textvqa-boxes":
        save({"dataset_id": [str(i) for i in range(n)], "question": [it.question for it in items], "image": imgs,
              "answer": [(list(it.answers) * 10)[:10] for it in items],
              "bbox": [[float(it.boxes[0][0]), float(it.boxes[0][1]), float(it.boxes[0][2] - it.boxes[0][0]),
                        float(it.boxes[0][3] - it.boxes[0][1])] for it in items]}, "data", "train")
    elif name == "vstar":
        (root / "direct_attributes").mkdir(exist_ok=True)
        with open(root / "test_questions.jsonl", "w", encoding="utf-8") as f:
            for i, it in enumerate(items):
                rel = f"direct_attributes/sa_{i}.jpg"
                it.image.save(root / rel, quality=95)
                ann = {"target_object": ["object"], "bbox": [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in it.boxes]}
                (root / rel).with_suffix(".json").write_text(json.dumps(ann))
                opts = "\n".join(f"({chr(65 + k)}) {o}" for k, o in enumerate(it.options))
                text = f"{stem(it.question)}\n{opts}\nAnswer with the option's letter from the given choices directly."
                f.write(json.dumps({"image": rel, "text": text, "category": "direct_attributes",
                                    "question_id": i, "label": it.answers[0]}) + "\n")
    elif name in ("docvqa", "infovqa"):
        rows = {"questionId": [str(1000 + i) for i in range(n)], "question": [it.question for it in items],
                "image": imgs, "answers": [list(it.answers) for it in items], "data_split": ["val"] * n}
        if name == "docvqa":
            rows.update(docId=list(range(n)), question_types=[["form"] for _ in items])
        else:
            rows.update(answer_type=[["single span"] for _ in items], image_url=[""] * n)
        save(rows, b.config, "validation")
    elif name.startswith("pope"):
        cat = b.split if b.config else "adversarial"
        rows = {"id": [str(i) for i in range(n)], "question_id": [str(i + 1) for i in range(n)],
                "question": [it.question for it in items], "answer": [it.answers[0] for it in items],
                "image_source": [f"img{i}" for i in range(n)], "image": imgs, "category": [cat] * n}
        save(rows, b.config or "data", b.split)
    elif name == "gqa":
        save({"id": [str(200 + i) for i in range(n)], "imageId": [f"n{i}" for i in range(n)],
              "question": [it.question for it in items], "answer": [it.answers[0] for it in items],
              "fullAnswer": [f"It is {it.answers[0]}." for it in items]}, b.config, "testdev")
        save({"id": [f"n{i}" for i in range(n)], "image": imgs}, b.images_config, "testdev")
    elif name == "realworldqa":
        qs = [stem(it.question) + "\n" + "\n".join(f"{chr(65 + k)}. {o}" for k, o in enumerate(it.options))
              + "\nPlease answer directly with only the letter of the correct option and nothing else."
              for it in items]
        save({"image": imgs, "question": qs, "answer": [it.answers[0] for it in items]}, "data", "test")
    else:  # pragma: no cover - every benchmark is handled above
        raise ValueError(name)
    return root
