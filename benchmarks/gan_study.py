"""GAN options on builtin:digits: throughput and FID per CPU-second, and CR vs the baseline.

Each *option* is a set of ``GanRunParams`` overrides (``OPTIONS``; ``default`` is
pipeline.yaml's). For every option and variant (``cr1`` = baseline N = 1, ``cr2``, ``cr4``)
one process trains all ``--seeds`` with ``kexue.gan.train.train_gan`` (the seeds together
when the option vectorises them), tracks FID over training in the shared feature network's
features (``make_eval_fn``), and reports:

- throughput: steps/s per run and run-steps/s per process (wall and CPU), compile time;
- FID over training per variant (mean ± std over seeds, final and best-so-far), and the CPU
  seconds per run each budget costs, so options compare by FID per CPU-second;
- at the final budget, ``compare_variants``: every variant × seed, Welch's t-test vs cr1.

Processes run ``--workers`` at a time, single-threaded. CPU seconds are measured per
process (they include compilation and evaluation), wall seconds too; load averages are
recorded before and after, since the machine may be shared.

    .venv/bin/python benchmarks/gan_study.py --options default --cascades 1 2 4 --out /tmp/gan_study
    .venv/bin/python benchmarks/gan_study.py --options default w8 b32 lr5e-4 --cascades 1 --steps 5040
    .venv/bin/python benchmarks/gan_study.py --kernels   # grouped-conv vs per-member conv timing
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

ADAM = {"name": "adam", "beta_1": 0.5}
LA_LOOKAHEAD = {**ADAM, "learning_rate": 1e-3, "layer_adaptation": True, "lookahead": {"k": 5, "alpha": 0.5},
                "schedule": {500: 1.0}}
OPTIONS: dict[str, dict[str, Any]] = {
    "default": {},  # pipeline.yaml's train params (GanRunParams defaults)
    # issue 13's filing (1d16934), its settings pinned: the defaults have moved since (its train step
    # drew a second batch of fakes for G; the filing's own tree is the "before" in docs/gan_study.md)
    "today": {"width": 64, "steps": 2500, "batch_size": 64, "vectorize_seeds": False, "eval_every": 250,
              "jit_compile": False, "d_optimizer": {**ADAM, "learning_rate": 2e-4},
              "g_optimizer": {**ADAM, "learning_rate": 2e-4}},
    # the default before the generator's moving average (3 December 2026): its own weights, 6e-4, XLA
    "own_weights": {"steps": 3500, "jit_compile": True, "d_optimizer": {**ADAM, "learning_rate": 6e-4},
                    "g_optimizer": {**ADAM, "learning_rate": 6e-4}},
    "w32": {"width": 32},
    "w8": {"width": 8},
    "g_w8": {"width": 8, "d_width": 16},  # a narrower generator only
    "d_w8": {"d_width": 8},  # a narrower discriminator only
    "b32": {"batch_size": 32},
    "lr5e-4": {"d_optimizer": {**ADAM, "learning_rate": 5e-4}, "g_optimizer": {**ADAM, "learning_rate": 5e-4}},
    "b32_lr4e-4": {"batch_size": 32, "d_optimizer": {**ADAM, "learning_rate": 4e-4},
                   "g_optimizer": {**ADAM, "learning_rate": 4e-4}},
    "b32_lr8e-4": {"batch_size": 32, "d_optimizer": {**ADAM, "learning_rate": 8e-4},
                   "g_optimizer": {**ADAM, "learning_rate": 8e-4}},
    "b32_lr6e-4": {"batch_size": 32, "d_optimizer": {**ADAM, "learning_rate": 6e-4},
                   "g_optimizer": {**ADAM, "learning_rate": 6e-4}},
    "b16_lr4e-4": {"batch_size": 16, "d_optimizer": {**ADAM, "learning_rate": 4e-4},
                   "g_optimizer": {**ADAM, "learning_rate": 4e-4}},
    "ttur": {"d_optimizer": {**ADAM, "learning_rate": 4e-4}, "g_optimizer": {**ADAM, "learning_rate": 1e-4}},
    "separate": {"vectorize_seeds": False},  # the seeds one after another, same model
    # issue 14's optimizer composition on both sides: layer adaptation + Lookahead + a linear
    # warm-up on Adam (layer adaptation scales steps to the weights' norms: a larger rate)
    "la_lookahead": {"d_optimizer": LA_LOOKAHEAD, "g_optimizer": LA_LOOKAHEAD},
}


def prepare(out: Path, seed: int = 0, epochs: int = 30) -> dict[str, Any]:
    """Write the digits as .npy, train and save the feature net (as the pipeline's), sanity FIDs."""
    from kexue.gan.data import write_images
    from kexue.gan.eval import features, metrics

    data = write_images("builtin:digits", out / "data")
    x = np.load(data["files"]["images"])
    y = np.load(data["files"]["labels"])
    t0 = time.perf_counter()
    model, info = features.train_feature_model(x, y, seed=seed, epochs=epochs)
    train_seconds = time.perf_counter() - t0
    features.save_feature_model(model, out / "feature_model.keras")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x))
    a, b = x[perm[: len(x) // 2]], x[perm[len(x) // 2:]]
    return {
        "images": data["files"]["images"],
        "feature_model": str(out / "feature_model.keras"),
        "feature_net": {**info, "train_seconds": round(train_seconds, 2)},
        "sanity": {"real_half_vs_half": metrics.evaluate_samples(a, b, model),
                   "uniform_noise_vs_real": metrics.evaluate_samples(
                       rng.uniform(-1, 1, x.shape).astype(np.float32), x, model)},
    }


def train_one(images: str, feature_model: str, run_dir: str, params: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """One (option, variant) process: every seed; the records compare_variants reads, and timings."""
    from kexue.gan.eval import features, metrics
    from kexue.gan.train import train_gan

    x = np.load(images)
    eval_fn = metrics.make_eval_fn(x, features.load_feature_model(feature_model))
    cpu0, t0 = time.process_time(), time.perf_counter()
    results = train_gan(images, run_dir, params, seeds, str(Path(run_dir) / "checkpoint"), eval_fn=eval_fn)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    runs = [{"variant": f"cr{params['cascades']}", "seed": seed, "history": r["metrics"]["eval"],
             "samples_final": r["files"]["samples_final"]} for seed, r in results.items()]
    metrics = [r["metrics"] for r in results.values()]
    groups = 1 if params.get("vectorize_seeds", True) else len(seeds)  # models trained one after another
    return {"runs": runs, "steps": metrics[0]["step"], "cpu_seconds": cpu, "wall_seconds": wall,
            "steps_per_second_per_run": float(np.mean([m["steps_per_second"] for m in metrics])),
            "eval_seconds": sum(m["eval_seconds"] for m in metrics[:: len(metrics) // groups]),
            "first_epoch_seconds": sum(m["first_epoch_seconds"] or 0 for m in metrics[:: len(metrics) // groups])}


def budget_table(records: list[dict[str, Any]], cpu_per_run_step: float, compile_cpu: float, seeds: int) -> list[dict[str, Any]]:
    """Per evaluated step: FID mean ± std over seeds (final = at that step, best = best so far), CPU s per run."""
    steps = sorted({row["step"] for r in records for row in r["history"]})
    table = []
    for s in steps:
        final = [next(row["fid"] for row in r["history"] if row["step"] == s) for r in records]
        best = [min(row["fid"] for row in r["history"] if row["step"] <= s) for r in records]
        table.append({"step": s, "fid_final": round(float(np.mean(final)), 3), "fid_final_std": round(float(np.std(final, ddof=1)), 3),
                      "fid_best": round(float(np.mean(best)), 3), "fid_best_std": round(float(np.std(best, ddof=1)), 3),
                      "cpu_seconds_per_run": round(s * cpu_per_run_step + compile_cpu / seeds, 1)})
    return table


def study(args: argparse.Namespace, setup: dict[str, Any]) -> dict[str, Any]:
    from kexue.gan.eval.compare import compare_variants
    from kexue.gan.params import GanRunParams

    jobs, keys = [], []
    for option in args.options:
        for cascades in args.cascades:
            params = {**OPTIONS[option], "cascades": cascades}
            if args.steps:
                params["steps"] = args.steps
            if args.eval_every:
                params["eval_every"] = args.eval_every
            params = GanRunParams.model_validate(params).model_dump(mode="json", exclude_unset=True) | {"cascades": cascades}
            jobs.append((setup["images"], setup["feature_model"], str(Path(args.out) / "runs" / f"{option}_cr{cascades}"),
                         params, list(range(args.seeds))))
            keys.append((option, cascades))
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        outcomes = list(pool.map(train_one, *zip(*jobs)))
    wall = time.perf_counter() - t0
    report: dict[str, Any] = {"wall_seconds": round(wall, 1), "load_before": [round(v, 2) for v in load_before],
                              "load_after": [round(v, 2) for v in os.getloadavg()], "options": {}}
    for option in args.options:
        rows = [(c, o) for (opt, c), o in zip(keys, outcomes) if opt == option]
        records = [r for _, o in rows for r in o["runs"]]
        per_variant = {}
        for cascades, o in rows:
            steps, n = o["steps"], args.seeds
            compile_cpu = o["first_epoch_seconds"] * (o["cpu_seconds"] / max(o["wall_seconds"], 1e-9))
            cpu_train = max(o["cpu_seconds"] - o["eval_seconds"] - compile_cpu, 1e-9)
            per_variant[f"cr{cascades}"] = {
                "steps": steps, "cpu_seconds": round(o["cpu_seconds"], 1), "wall_seconds": round(o["wall_seconds"], 1),
                "eval_seconds": round(o["eval_seconds"], 1), "first_epoch_seconds": round(o["first_epoch_seconds"], 1),
                "steps_per_second_per_run": round(o["steps_per_second_per_run"], 1),
                "run_steps_per_cpu_second": round(steps * n / cpu_train, 1),
                "fid_by_budget": budget_table([r for r in o["runs"]], cpu_train / (steps * n), compile_cpu, n),
            }
        entry: dict[str, Any] = {"params": OPTIONS[option], "per_variant": per_variant}
        if len(rows) > 1 and 1 in args.cascades:
            samples = {r["variant"]: np.load(r["samples_final"]) for r in records if r["seed"] == 0}
            result = compare_variants(records, Path(args.out) / f"eval_{option}", baseline="cr1", samples=samples)
            entry.update({k: result["metrics"][k] for k in ("per_variant", "welch_vs_baseline", "table_markdown")})
            entry["per_variant_fid"] = entry.pop("per_variant")
            entry["per_variant"] = per_variant
        report["options"][option] = entry
    return report


def kernels(repeat: int = 200) -> dict[str, Any]:
    """CPU ms per member of a 3×3 convolution's forward + both gradients, three ways, 5 members."""
    import tensorflow as tf

    members, width, batch = 5, 16, 128
    x = tf.random.normal((batch, 4, 4, members * width))
    grouped_kernel = tf.Variable(tf.random.normal((3, 3, width, members * 2 * width)))
    kernels_ = [tf.Variable(tf.random.normal((3, 3, width, 2 * width))) for _ in range(members)]
    stacked = tf.Variable(tf.random.normal((members, 9 * width, 2 * width)))

    def grouped(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.nn.conv2d(x, grouped_kernel, 1, "SAME") ** 2)
        return tape.gradient(loss, [grouped_kernel, x])

    def per_member(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.add_n([tf.reduce_sum(tf.nn.conv2d(xi, k, 1, "SAME") ** 2)
                             for xi, k in zip(tf.split(x, members, -1), kernels_)])
        return tape.gradient(loss, [*kernels_, x])

    def im2col(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            xs = tf.transpose(tf.reshape(x, (batch, 4, 4, members, width)), (3, 0, 1, 2, 4))
            padded = tf.pad(xs, [[0, 0], [0, 0], [1, 1], [1, 1], [0, 0]])
            cols = tf.concat([padded[:, :, i:i + 4, j:j + 4] for i in range(3) for j in range(3)], -1)
            loss = tf.reduce_sum(tf.matmul(tf.reshape(cols, (members, batch * 16, 9 * width)), stacked) ** 2)
        return tape.gradient(loss, [stacked, x])

    out = {}
    for name, fn, jits in (("grouped conv (XLA)", grouped, (True,)), ("per-member conv", per_member, (True, False)),
                           ("im2col batched matmul", im2col, (True, False))):
        for jit in jits:
            f = tf.function(fn, jit_compile=jit)
            f(x)
            c0 = time.process_time()
            for _ in range(repeat):
                f(x)
            out[f"{name}{' XLA' if jit else ''}"] = round((time.process_time() - c0) / repeat / members * 1e3, 3)
    return {"cpu_ms_per_member": out, "members": members, "width": width, "batch": batch}


def main(argv: list[str] | None = None) -> None:
    from kexue.core.artifacts import write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--options", nargs="+", default=["default"], choices=sorted(OPTIONS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--cascades", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=None, help="override every option's steps")
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kernels", action="store_true", help="only time the convolution variants")
    parser.add_argument("--out", default="/tmp/gan_study")
    args = parser.parse_args(argv)
    if args.kernels:
        print(json.dumps({"load": os.getloadavg(), **kernels()}, indent=2))
        return

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    setup = prepare(out)
    report: dict[str, Any] = {"feature_net": setup["feature_net"], "sanity": setup["sanity"], "seeds": args.seeds,
                              "workers": args.workers, "cpus": os.cpu_count(), **study(args, setup)}
    report["total_wall_seconds"] = round(time.perf_counter() - t0, 1)
    write_json_atomic(out / "study.json", report)
    print(json.dumps(report, indent=2, default=float))
    print(f"wrote {out / 'study.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
