"""Cascading Rejection vs the plain discriminator on builtin:digits, over several seeds.

Trains every variant (``cr1`` = baseline N = 1, ``cr2``, ``cr4``) for every seed with
``kexue.gan.train.train_gan`` (its default params unless ``--steps`` is given), two runs at a time
in separate single-threaded processes, tracks FID (and KID, IS, precision/recall) over
training with ``kexue.gan.eval.metrics.make_eval_fn``, and compares the variants with
``kexue.gan.eval.metrics.compare_variants`` (mean ± std, Welch's t-test vs the baseline).

``--budgets 3000 6000 12000`` repeats the study at growing step budgets; runs are resumed
from their checkpoints, so a larger budget extends the smaller one (train_gan's batch order
makes an extended run identical to a fresh run of that length).

Prints one JSON document: feature-net sanity numbers (held-out accuracy, FID of one real
half vs the other = the floor, FID of uniform noise), per budget the table, per-variant
mean ± std, Welch tests, mean FID over training per variant, wall time; plus load average.

    .venv/bin/python benchmarks/gan_study.py --seeds 5 --workers 2 --out /tmp/gan_study
"""
from __future__ import annotations

import os

# Before TensorFlow is imported here or in a spawned worker (which re-imports this module).
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def prepare(out: Path, seed: int) -> dict[str, Any]:
    """Write the digits as .npy, train and save the feature net, and measure sanity FIDs."""
    from kexue.gan.eval import metrics as gan_eval
    from kexue.gan.data import write_images

    data = write_images("builtin:digits", out / "data")
    x = np.load(data["files"]["images"])
    y = np.load(data["files"]["labels"])
    t0 = time.perf_counter()
    model, info = gan_eval.train_feature_model(x, y, seed=seed)
    train_seconds = time.perf_counter() - t0
    gan_eval.save_feature_model(model, out / "feature_model.keras")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x))
    a, b = x[perm[: len(x) // 2]], x[perm[len(x) // 2:]]
    half = gan_eval.evaluate_samples(a, b, model)
    noise = gan_eval.evaluate_samples(rng.uniform(-1, 1, x.shape).astype(np.float32), x, model)
    return {
        "images": data["files"]["images"],
        "feature_model": str(out / "feature_model.keras"),
        "feature_net": {**info, "train_seconds": round(train_seconds, 2)},
        "sanity": {"real_half_vs_half": half, "uniform_noise_vs_real": noise},
    }


def train_one(images: str, feature_model: str, run_dir: str, params: dict[str, Any]) -> dict[str, Any]:
    """One (variant, seed) run in a worker process: the record compare_variants reads."""
    from kexue.gan.eval import metrics as gan_eval
    from kexue.gan.train import train_gan

    x = np.load(images)
    eval_fn = gan_eval.make_eval_fn(x, gan_eval.load_feature_model(feature_model))
    t0 = time.perf_counter()
    result = train_gan(images, run_dir, params, checkpoint_dir=str(Path(run_dir) / "checkpoint"), eval_fn=eval_fn)
    m = result["metrics"]
    return {
        "variant": m["variant"], "seed": m["seed"], "history": m["eval"],
        "steps": m["step"], "resumed_from_step": m["resumed_from_step"],
        "wall_seconds": time.perf_counter() - t0,
        "train_seconds": m["seconds"], "eval_seconds": m["eval_seconds"],
        "steps_per_second": m["steps_per_second"],
        "samples_final": result["files"]["samples_final"],
    }


def fid_curves(records: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Per variant: steps and the mean / std of FID over seeds at each step."""
    curves: dict[str, dict[str, list[float]]] = {}
    for variant in dict.fromkeys(r["variant"] for r in records):
        by_step: dict[int, list[float]] = {}
        for r in records:
            if r["variant"] == variant:
                for row in r["history"]:
                    by_step.setdefault(row["step"], []).append(row["fid"])
        steps = sorted(by_step)
        curves[variant] = {
            "step": steps,
            "fid_mean": [round(float(np.mean(by_step[s])), 3) for s in steps],
            "fid_std": [round(float(np.std(by_step[s])), 3) for s in steps],
        }
    return curves


def study(args: argparse.Namespace, setup: dict[str, Any], budget: int | None) -> dict[str, Any]:
    from kexue.gan.eval import metrics as gan_eval

    runs_dir = Path(args.out) / "runs"
    jobs = []
    for cascades in args.cascades:
        for seed in range(args.seeds):
            params: dict[str, Any] = {"cascades": cascades, "seed": seed}
            if budget is not None:
                params["steps"] = budget
            jobs.append((setup["images"], setup["feature_model"], str(runs_dir / f"cr{cascades}_s{seed}"), params))
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        records = list(pool.map(train_one, *zip(*jobs)))
    wall = time.perf_counter() - t0
    samples = {v: np.load(next(r["samples_final"] for r in records if r["variant"] == v and r["seed"] == 0))
               for v in dict.fromkeys(r["variant"] for r in records)}
    label = "default" if budget is None else str(budget)
    result = gan_eval.compare_variants(records, Path(args.out) / f"eval_{label}", baseline="cr1", samples=samples)
    metrics = result["metrics"]
    return {
        "budget_steps": records[0]["steps"],
        "wall_seconds": round(wall, 1),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "runs": [{k: r[k] for k in ("variant", "seed", "steps", "resumed_from_step", "wall_seconds",
                                      "train_seconds", "eval_seconds", "steps_per_second")} for r in records],
        "table": metrics["rows"],
        "per_variant": metrics["per_variant"],
        "welch_vs_baseline": metrics["welch_vs_baseline"],
        "fid_over_training": fid_curves(records),
        "table_markdown": metrics["table_markdown"],
        "files": result["files"],
    }


def main(argv: list[str] | None = None) -> None:
    from kexue.core.artifacts import write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--cascades", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--budgets", type=int, nargs="*", default=[],
                        help="step budgets to study in turn (default: train_gan's default steps)")
    parser.add_argument("--out", default="/tmp/gan_study")
    args = parser.parse_args(argv)
    if 1 not in args.cascades:
        parser.error("the baseline (cascades 1) must be among --cascades")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    setup = prepare(out, seed=0)
    report: dict[str, Any] = {
        "feature_net": setup["feature_net"],
        "sanity": setup["sanity"],
        "seeds": args.seeds,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "studies": [],
    }
    for budget in args.budgets or [None]:
        report["studies"].append(study(args, setup, budget))
        write_json_atomic(out / "study.json", report)  # partial results survive a later budget's failure
        print(f"budget {report['studies'][-1]['budget_steps']} done in "
              f"{report['studies'][-1]['wall_seconds']} s", file=sys.stderr, flush=True)
    report["total_wall_seconds"] = round(time.perf_counter() - t0, 1)
    write_json_atomic(out / "study.json", report)
    print(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
