"""Experiments behind the notebooks: run methods over the benchmark, tabulate, and judge claims.

>>> from egg import runs as ex
>>> vlm = ex.load_vlm()                                    # the embedded reference model
>>> df = ex.run(vlm, ["base", "egg"], families=["text"], n=20, path="results/records.jsonl")
>>> ex.accuracy_table(df)
>>> print(ex.verdict_c1(df))

Everything the notebooks show is computed here (the notebooks only call these functions),
so the tests reach all of it.

Conventions
-----------
* **Scores** are the family's metric per item in [0, 1] (``bench.score``); tables show them
  as percentage points. ``correct`` = score >= 0.5 (used by McNemar's test).
* **Cost** is counted in *forward-equivalents* (FE): one full-sequence decoder forward
  pass (a generation's prefill included) = 1 FE, one backward pass = 2 FE
  (``FE_FORWARD``, ``FE_BACKWARD``). Vision-tower encodings and incremental decoding
  steps are reported separately and not folded in. Wall-clock seconds are kept in the
  records but never shown in tables (they are not reproducible).
* **Evidence size buckets** (localisation): the item's evidence fraction = total area of
  its ground-truth boxes / image area; small < 0.3 %, medium 0.3 % - 1 %, large >= 1 %
  (``SIZE_BUCKETS``).
* **Uncertainty**: 95 % percentile-bootstrap intervals (``egg.stats``, 2000 resamples,
  seed 0), paired over items when two methods are compared; exact McNemar p-values on
  ``correct``.
* **Verdicts** (``verdict_c1`` ... ``verdict_c4``, ``verdict_multi``) read the numbers and
  return a ``Verdict`` whose status is "supported", "inconclusive" (right direction, CI
  includes 0) or "not supported", with a sentence quoting the numbers it was decided on.

Records and resuming
--------------------
``run`` writes one ``Record`` per (item, method configuration) as a JSON line, flushed
per record. A record's key hashes (model fingerprint, code fingerprint, family, split,
seed, item index, method, effective options), so an interrupted run resumes where it
stopped, records of a different model or of other method code in the same file are never
reused, and different notebooks sharing one file reuse each other's work.
"""
from __future__ import annotations

from .files import load_vlm, quiet, results_path, save_table, to_markdown
from .loop import ItemSource, Spec, family_of, make_specs, records_frame, run
from .records import (Record, code_fingerprint, load_records, make_record, model_fingerprint, read_json_lines,
                      record_key, save_records)
from .registry import (FE_BACKWARD, FE_FORWARD, MAIN_METHODS, METHODS, NEUTRAL_BAND, SIZE_BUCKETS, VICROP_METHODS,
                       effective_options)
from .configs import (MULTI_FAMILIES, PAPER_CHOICES, ablation_configs, layer_values, multi_configs,
                      stopping_configs)
from .tables import (Delta, ablation_table, accuracy_table, bucket_legend, cost_table, delta_summary, delta_table,
                     evidence_kind, headline,
                     localisation_table, multi_evidence_table, paired_delta, pareto_front, reference_point,
                     size_bucket, stopping_table)
from .verdicts import Verdict, trained_attention, verdict_c1, verdict_c2, verdict_c3, verdict_c4, verdict_multi
from ..outputs import REPO_ROOT, resolve_dir

__all__ = [
    "METHODS", "MAIN_METHODS", "VICROP_METHODS", "Record", "Spec", "Verdict", "Delta", "run", "make_specs",
    "ItemSource", "family_of", "evidence_kind", "headline",
    "effective_options", "make_record", "record_key", "records_frame", "load_records", "save_records", "read_json_lines",
    "model_fingerprint", "code_fingerprint", "accuracy_table", "delta_table", "delta_summary", "localisation_table", "cost_table",
    "stopping_table", "reference_point", "ablation_table", "multi_evidence_table", "pareto_front", "paired_delta", "size_bucket",
    "bucket_legend", "stopping_configs", "ablation_configs", "layer_values", "multi_configs", "verdict_c1",
    "verdict_c2", "trained_attention", "verdict_c3", "verdict_c4", "verdict_multi", "save_table", "to_markdown", "resolve_dir",
    "results_path", "load_vlm", "quiet", "SIZE_BUCKETS", "FE_FORWARD", "FE_BACKWARD", "NEUTRAL_BAND",
    "PAPER_CHOICES", "MULTI_FAMILIES", "REPO_ROOT",
]
