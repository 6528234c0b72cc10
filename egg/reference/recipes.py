"""Multi-stage training recipes: a model that several `egg.reference.train` runs make in turn.

The 24 x 24 model is trained in stages, each continuing the last one's finished model
(`--init`), as LLaVA's stages continue each other: `llava15-look` from scratch, then the
recipes that continue it in turn (`llava15-detail`, `llava15-large`, `llava15-large-d4`,
`llava15-large-pope`, the embedded model). A recipe names them once, so that
`make train-reference RECIPE=llava15-detail` retrains it with one command.
Each stage's model is kept under `work`; a stage whose model is finished is not run again, and
an interrupted one resumes from its last checkpoint (`--resume 1`), so an interrupted recipe
loses at most one evaluation interval. The stages share `work/train_cache`, where their
rendered training sets are cached.

    python -m egg.reference.recipes llava15-detail [--work DIR] [--out DIR] [--dry-run] [--stop-after STAGE]
"""
from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import write_dir
from .train import TrainConfig, config_from_args, train


@dataclass(frozen=True)
class Recipe:
    """`start`: the saved model the first stage continues; `common`: every training stage's flags;
    `stages`: (name, flags) in order, each a `train` run, or (name, flags, "decoder"): the decoder
    alone taught pope's facts from its frozen tower (`DecoderStage`); `out`: where the last stage's
    model is copied. An empty `start`: the first stage trains from scratch."""
    start: str
    out: str
    common: tuple[str, ...]
    stages: tuple[tuple, ...]


@dataclass(frozen=True)
class DecoderStage:
    """`python -m egg.reference.existence INIT FLAGS --save OUT`: the decoder taught pope's "is there"
    facts at the full view, the tower frozen. Short (minutes): an interrupted one runs again whole."""
    init: str
    out: str
    flags: tuple[str, ...]

    def argv(self) -> list[str]:
        return [self.init, *self.flags, "--save", self.out]


_DETAIL = ("--look-detail", "1", "--read-full", "0.5", "--read-alternate", "1")
_LARGE = ("--geometry", "llava15-large", "--readable-px", "64")
_LOOK = "data/reference-llava15-look"  # run 24: where `llava15-look` ends and `llava15-detail` starts

RECIPES: dict[str, Recipe] = {
    # from scratch: run 23 (the vision warm-up, reading crops, the full view with the look loss, the
    # curriculum; 45 min on 2 cores) and run 24 (run 23 continued on the mixture, a 1000-step schedule
    # stopped at step 750 for time; the committed weights are that step's save). CHANGELOG, stop 42.
    # Replayed in stop 58's environment, run 23 did not bind the map as the committed run did (README)
    "llava15-look": Recipe(
        start="",
        out=_LOOK,
        common=("--preset", "llava15", "--seed", "1", "--look", "3", "--max-minutes", "600"),
        stages=(
            ("run23", ("--colour-weight", "10", "--warmup-full", "0.5", "--vision-steps", "1500", "--read-steps", "1000",
                       "--full-steps", "500", "--max-steps", "2000", "--eval-every", "500")),
            ("run24", ("--read-steps", "0", "--max-steps", "1000", "--stop-step", "750", "--eval-every", "250")),
        ),
    ),
    # run 24 (data/reference-llava15-look, committed) -> runs 35a, 36, 37, 38, 39 (CHANGELOG, stops
    # 45 and 46); 81 min of training on 2 CPU cores by their logs, plus rendering
    "llava15-detail": Recipe(
        start=_LOOK,
        out="data/reference-llava15-detail",
        common=("--preset", "llava15", "--seed", "1", "--look", "3", "--curriculum", "0"),
        stages=(
            ("run35a", ("--read-steps", "400", "--max-steps", "400", "--eval-every", "400")),
            ("run36", _DETAIL + ("--read-steps", "600", "--max-steps", "600", "--eval-every", "300")),
            ("run37", _DETAIL + ("--read-steps", "1500", "--max-steps", "1500", "--eval-every", "500")),
            ("run38", _DETAIL + ("--read-mix", "1", "--read-steps", "1000", "--max-steps", "1000",
                                 "--eval-every", "500")),
            ("run39", _DETAIL + ("--read-mix", "1", "--read-scale", "6", "--read-steps", "1000",
                                 "--max-steps", "1000", "--eval-every", "500")),
        ),
    ),
}
# the same stages, then run 41: run 39's stage once more on items drawn at `llava15-large` (named
# objects 3-4 cells a side), reading taught only where the object is shown 64 px or more (never
# at the full view, where it is 42-56 px); CHANGELOG, stop 48
RECIPES["llava15-large"] = Recipe(
    start=RECIPES["llava15-detail"].start,
    out="data/reference-llava15-large",
    common=RECIPES["llava15-detail"].common,
    stages=RECIPES["llava15-detail"].stages + (
        ("run41", RECIPES["llava15-detail"].stages[-1][1] + _LARGE),
    ),
)

# run 39 plus run 44: its stage once more with the reading crops square and centred on the object,
# 1-4 x its side (stop 52: fitted on such crops, its decoder read a 3x crop best)
RECIPES["llava15-centred"] = Recipe(
    start=RECIPES["llava15-detail"].out,
    out="data/reference-llava15-centred",
    common=RECIPES["llava15-detail"].common,
    stages=(("run44", _DETAIL + ("--read-mix", "1", "--read-scale", "4", "--read-square", "1", "--read-spread", "0",
                                 "--read-steps", "1000", "--max-steps", "1000", "--eval-every", "500")),),
)

# run 41, then run 45 (run 44's centred square reading crops at `llava15-large`; not kept, `--stop-after
# run45`) and run 46 (the same on items drawn at `llava15-large-d4`, the detail 0.4 x the object's side
# instead of 0.3); CHANGELOG, stop 53
_CENTRED = RECIPES["llava15-centred"].stages[0][1]
_D4 = ("--geometry", "llava15-large-d4", "--readable-px", "64")
RECIPES["llava15-large-d4"] = Recipe(
    start=RECIPES["llava15-large"].out,
    out="data/reference-llava15-large-d4",
    common=RECIPES["llava15-detail"].common,
    stages=(("run45", _CENTRED + _LARGE),
            ("run46", _CENTRED + _D4)),
)


# run 46, then run 47 (its stage with the object anywhere within a quarter of the room around it in
# a reading crop, as EGG's boxes hold it) and run 48 (the same on `llava15-large-pope` items, pope's
# shapes taught at the full view, vstar's reading crops asking its own question); CHANGELOG, stop 54
_SPREAD = _DETAIL + ("--read-mix", "1", "--read-scale", "4", "--read-square", "1", "--read-spread", "0.25",
                     "--read-steps", "1000", "--max-steps", "1000", "--eval-every", "500")
RECIPES["llava15-large-pope"] = Recipe(
    start=RECIPES["llava15-large-d4"].out,
    out="data/reference-llava15-large-pope",
    common=RECIPES["llava15-detail"].common,
    stages=(("run47", _SPREAD + _D4),
            ("run48", _SPREAD + ("--geometry", "llava15-large-pope", "--readable-px", "64", "--pope-readable-px", "40",
                                 "--read-own", "1"))),
)


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise SystemExit(f"no recipe {name!r}; the recipes are {sorted(RECIPES)}")
    return RECIPES[name]


def stage_configs(r: Recipe, work: str | Path) -> list[tuple[str, TrainConfig | DecoderStage]]:
    """Each stage's TrainConfig (or DecoderStage), its model under `work`/<stage>, `--init` the previous one's."""
    work, prev, out = Path(work), r.start, []
    for name, flags, *kind in r.stages:
        dest = work / name
        if kind == ["decoder"]:
            out.append((name, DecoderStage(str(prev), str(dest), tuple(flags))))
        elif kind:
            raise ValueError(f"stage {name}: kind {kind[0]!r}; a stage is a training run or 'decoder'")
        else:
            argv = [*r.common, *flags, "--init", str(prev), "--out", str(dest), "--resume", "1"]
            out.append((name, config_from_args(argv)))
        prev = dest
    return out


def finished(path: str | Path) -> bool:
    """A stage's model that its training saved as finished (a periodic save is not)."""
    log = Path(path) / "training_log.json"
    return log.exists() and bool(json.loads(log.read_text()).get("finished"))


def run(name: str | Recipe, work: str | Path | None = None, out: str | Path | None = None,
        dry_run: bool = False, stop_after: str | None = None) -> Path:
    """Train the recipe's stages (`name`: one of RECIPES, or a Recipe) that are not finished
    under `work`, then copy the last one to `out` (default: the recipe's). With `dry_run`,
    print what would run and train nothing; with `stop_after`, end after that stage (its model
    stays under `work`, nothing is copied) and return where it is."""
    r, name = (recipe(name), name) if isinstance(name, str) else (name, "custom")
    work = Path(work or f"data/train_cache/recipe-{name}")
    out = Path(out or r.out)
    if r.start and not (Path(r.start) / "config.json").exists():  # a saved model, as `--init` takes
        raise SystemExit(f"recipe {name}: its first stage continues {r.start}, which holds no saved model")
    configs = stage_configs(r, work)
    if stop_after is not None and stop_after not in [n for n, _ in configs]:
        raise SystemExit(f"--stop-after {stop_after!r}: recipe {name} has the stages {[n for n, _ in configs]}")
    for i, (stage, cfg) in enumerate(configs, 1):
        done = finished(cfg.out)
        print(f"[{i}/{len(configs)}] {stage}: {'finished, kept' if done else 'training'} -> {cfg.out}", flush=True)
        if not done and not dry_run:
            if isinstance(cfg, DecoderStage):
                from .existence import main as teach_decoder

                teach_decoder(cfg.argv())
            else:
                train(cfg)
        if stage == stop_after:
            return Path(cfg.out)
    last = Path(configs[-1][1].out)
    if not dry_run:
        write_dir(out, lambda tmp: shutil.copytree(last, tmp))
        print(f"recipe {name}: {last} copied to {out}", flush=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=sorted(RECIPES))
    ap.add_argument("--work", default=None, help="where each stage's model is kept (default data/train_cache/recipe-NAME)")
    ap.add_argument("--out", default=None, help="where the last stage's model goes (default: the recipe's)")
    ap.add_argument("--dry-run", action="store_true", help="list the stages and which are finished; train nothing")
    ap.add_argument("--stop-after", default=None, help="end after this stage (e.g. run35a); copy nothing")
    a = ap.parse_args(argv)
    run(a.name, a.work, a.out, a.dry_run, a.stop_after)


if __name__ == "__main__":
    main()
