"""``scalescope probe NAME RUN_DIR [--step S] [--json] ...``: run an instrument offline on a stored run.

One sub-command per instrument with an offline entry point (its module's ``probe_run``, which returns a
dict); this module owns the options, the text output and the ``--json`` output. The instruments' errors
name their arguments (``top_k``); :func:`_run` maps those onto the flags the user typed (``--top-k``).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..instruments import (
    covariance,
    curvature,
    fewshot,
    icl,
    icl_regression,
    induction,
    linear_probe,
    noise_scale,
    quanta,
    task_id,
)
from ..jsonable import jsonable
from .common import add_json, as_flag, option_flags, print_json

__all__ = ["add_parser"]

Compute = Callable[[argparse.Namespace], dict[str, Any]]
Show = Callable[[dict[str, Any], argparse.Namespace], None]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "probe",
        help="run an instrument offline on a stored run",
        description="Run an instrument offline on a stored run at one step: its latest checkpoint, or a step "
        "whose weights were kept (train.keep_weights).",
    )
    psub = p.add_subparsers(dest="probe", required=True)
    for add in (
        _noise_scale,
        _curvature,
        _covariance,
        _icl,
        _induction,
        _icl_regression,
        _task_id,
        _fewshot,
        _quanta,
        _linear_probe,
    ):
        add(psub)


# --- what every sub-command shares ---------------------------------------------------------------------


def _command(psub: Any, name: str, help: str, compute: Compute, show: Show) -> argparse.ArgumentParser:
    """The sub-command ``name`` with RUN_DIR, --step and --json; ``compute`` runs the probe, ``show`` prints
    its result as text."""
    p: argparse.ArgumentParser = psub.add_parser(name, help=help, description=help)
    p.add_argument("run_dir", help="a run directory: STORE/runs/<id>")
    p.add_argument("--step", type=int, default=None, help="step (default: the latest checkpoint)")
    add_json(p)
    p.set_defaults(fn=functools.partial(_run, compute, show))
    return p


def _add_batches(p: argparse.ArgumentParser, batches_of: str) -> None:
    """--n-batches and --batch-size, for the probes that average over probe batches of ``batches_of``."""
    p.add_argument("--n-batches", type=int, default=4, help="probe batches (default 4)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"{batches_of} per batch (default: the run's micro-batch or batch size)",
    )


def _run(compute: Compute, show: Show, args: argparse.Namespace) -> int:
    try:
        r = compute(args)
    except ConfigError as e:
        # An error naming one of this command's options by its argument name (field="top_k"): name the flag.
        raise as_flag(e, option_flags(args, exclude=("run_dir",))) from None
    if args.json:
        print_json(r)
    else:
        show(r, args)
    return 0


# --- the sub-commands ----------------------------------------------------------------------------------


def _noise_scale(psub: Any) -> None:
    def compute(a: argparse.Namespace) -> dict[str, Any]:
        return noise_scale.probe_run(
            a.run_dir,
            a.step,
            n_micro=a.n_micro,
            micro_batch_size=a.micro_batch_size,
            hessian=not a.no_hessian,
            hessian_batch_size=a.hessian_batch_size,
        )

    def show(r: dict[str, Any], a: argparse.Namespace) -> None:
        w = sys.stdout.write
        w(f"run {r['run_dir']} at step {r['step']}: {r['n_micro']:.0f} micro-batches of {r['b_small']:.0f} sequences\n")
        w(
            f"  |G|^2    = {r['G2']:.4g} ± {r['G2_stderr']:.2g}\n  tr(Sigma) = {r['trace_sigma']:.4g} ± "
            f"{r['trace_sigma_stderr']:.2g}\n"
        )
        w(
            f"  B_simple = {r['B_simple']:.4g} ± {r['B_simple_stderr']:.2g} sequences "
            f"({r['B_simple_tokens']:.4g} tokens)\n"
        )
        if not a.no_hessian:
            w(
                f"  B_noise  = {r['B_noise']:.4g} ± {r['B_noise_stderr']:.2g} sequences "
                f"({r['B_noise_tokens']:.4g} tokens)\n"
            )

    p = _command(
        psub, "noise-scale", "gradient noise scale B_simple and B_noise (McCandlish et al. 2018)", compute, show
    )
    p.add_argument("--n-micro", type=int, default=16, help="micro-batches (default 16)")
    p.add_argument(
        "--micro-batch-size",
        type=int,
        default=None,
        help="sequences per micro-batch (default: the run's micro-batch or batch size)",
    )
    p.add_argument(
        "--hessian-batch-size",
        type=int,
        default=None,
        help="sequences in the batch whose Hessian B_noise uses (default: all micro-batches together)",
    )
    p.add_argument("--no-hessian", action="store_true", help="skip B_noise (no Hessian-vector products)")


def _curvature(psub: Any) -> None:
    def compute(a: argparse.Namespace) -> dict[str, Any]:
        return curvature.probe_run(
            a.run_dir,
            a.step,
            top_k=a.top_k,
            batch_size=a.batch_size,
            trace_matvecs=a.trace_matvecs,
            density=a.density,
            ggn=a.ggn,
            tol=a.tol,
            seed=a.seed,
        )

    def show(r: dict[str, Any], a: argparse.Namespace) -> None:
        r = jsonable(r)  # NaN as None: a threshold or ratio that is not defined is left out
        print(f"{r['run_dir']} step {r['step']}: loss {r['loss']:.4f} on the probe batch")
        print("top eigenvalues: " + ", ".join(f"{v:.4g}" for v in r["eigenvalues"]))
        print(f"trace {r['trace']:.4g} ± {r['trace_stderr']:.2g} (Hutch++, 1 s.e.)")
        for k in ("precond_sharpness", "threshold_gd", "threshold_momentum", "threshold_adam", "eos_ratio"):
            if r.get(k) is not None:
                print(f"{k}: {r[k]:.4g}")
        print(f"{int(r['hvps'])} Hessian-vector products in {r['seconds']:.1f} s")

    p = _command(psub, "curvature", "top Hessian eigenvalues, trace (Hutch++), spectral density, EoS", compute, show)
    p.add_argument("--top-k", type=int, default=3, help="how many top eigenvalues (default 3)")
    p.add_argument("--batch-size", type=int, default=None, help="probe batch size (default: the run's micro-batch)")
    p.add_argument("--trace-matvecs", type=int, default=30, help="Hutch++ products, a multiple of 3 (default 30)")
    p.add_argument("--density", action="store_true", help="also the SLQ spectral density")
    p.add_argument("--ggn", action="store_true", help="also the Gauss-Newton matrix's top-k and trace")
    p.add_argument("--tol", type=float, default=1e-4, help="Lanczos relative tolerance (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random vectors of Lanczos and Hutch++ (default 0)")


def _covariance(psub: Any) -> None:
    def compute(a: argparse.Namespace) -> dict[str, Any]:
        return covariance.probe_run(
            a.run_dir,
            a.step,
            top_k=a.top_k,
            batch_size=a.batch_size,
            index=a.index,
            tol=a.tol,
            seed=a.seed,
            float64=a.float64,
        )

    def show(r: dict[str, Any], a: argparse.Namespace) -> None:
        r = jsonable(r)
        k = a.top_k
        print(f"{r['run_dir']} step {r['step']}: loss {r['loss']:.4f} on a probe batch of {r['batch_size']}")
        print("top Σ eigenvalues: " + ", ".join(f"{v:.4g}" for v in r["sigma_eigenvalues"][:k]))
        print(f"tr Σ {r['sigma_trace']:.4g}, effective rank {r['effective_rank']:.3g}")
        print("top Hessian eigenvalues: " + ", ".join(f"{v:.4g}" for v in r["hess_eigenvalues"]))
        print(
            f"top-{k} overlap {r['overlap']:.3f} (random subspaces: ~{k / r['params']:.1g}), "
            f"commutator {r['commutator']:.3f}, gradient fraction in top-{k} Hessian space {r['grad_fraction']:.3f}"
        )
        print(f"{r['seconds']:.1f} s")

    p = _command(
        psub, "covariance", "per-example gradient covariance: spectrum, alignment with the Hessian", compute, show
    )
    p.add_argument("--top-k", type=int, default=5, help="size of the top eigenspaces compared (default 5)")
    p.add_argument("--batch-size", type=int, default=None, help="probe batch size (default: the run's micro-batch)")
    p.add_argument("--index", type=int, default=0, help="probe batch index (default 0)")
    p.add_argument("--tol", type=float, default=1e-4, help="Lanczos relative tolerance (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the eigensolver's start vector (default 0)")
    p.add_argument("--float64", action="store_true", help="run on a double-precision copy of the model")


def _icl(psub: Any) -> None:
    def compute(a: argparse.Namespace) -> dict[str, Any]:
        return icl.probe_run(
            a.run_dir, a.step, early=a.early, late=a.late, n_batches=a.n_batches, batch_size=a.batch_size
        )

    def show(r: dict[str, Any], a: argparse.Namespace) -> None:
        w = sys.stdout.write
        w(f"run {r['run_dir']} at step {r['step']}: {r['sequences']} sequences of {r['seq_len']} tokens\n")
        w(
            f"  ICL score (loss at {r['late']} - loss at {r['early']}) = {r['score']:.4f} nats "
            f"({r['loss_late']:.4f} - {r['loss_early']:.4f})\n"
        )
        w(
            f"  accuracy at {r['late']} - at {r['early']} = {r['accuracy_score']:.4f} "
            f"({r['accuracy_late']:.4f} - {r['accuracy_early']:.4f})\n"
        )
        if "ideal_score" in r:
            w(f"  ideal score {r['ideal_score']:.4f}\n")

    p = _command(psub, "icl", "in-context learning score and loss against position (Olsson et al. 2022)", compute, show)
    _add_batches(p, "sequences")
    p.add_argument("--early", type=int, default=None, help="early input position (default seq_len // 10)")
    p.add_argument("--late", type=int, default=None, help="late input position (default seq_len - 1)")


def _induction(psub: Any) -> None:
    def compute(a: argparse.Namespace) -> dict[str, Any]:
        return induction.probe_run(a.run_dir, a.step, n_sequences=a.n_sequences, seed=a.seed)

    def show(r: dict[str, Any], a: argparse.Namespace) -> None:
        w = sys.stdout.write
        w(f"run {r['run_dir']} at step {r['step']}: {r['n_sequences']} repeated random sequences\n")
        w("layer head  prefix-matching  previous-token  duplicate-token\n")
        for li in range(r["n_layer"]):
            for hi in range(r["n_head"]):
                w(
                    f"{li:5d} {hi:4d}  {r['prefix_matching'][li][hi]:15.3f}  {r['previous_token'][li][hi]:14.3f}  "
                    f"{r['duplicate_token'][li][hi]:15.3f}\n"
                )
        w(
            f"copying: accuracy {r['copy_accuracy']:.3f} (random tokens {r['random_accuracy']:.3f}), "
            f"log-prob {r['copy_logprob']:.3f} (random tokens {r['random_logprob']:.3f}, chance "
            f"{r['chance_logprob']:.3f})\n"
        )

    p = _command(
        psub,
        "induction",
        "per-head prefix-matching and previous-token scores, copying (Olsson et al. 2022)",
        compute,
        show,
    )
    p.add_argument("--n-sequences", type=int, default=64, help="repeated random sequences (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe sequences (default 0)")


def _icl_regression(psub: Any) -> None:
    def compute(a: argparse.Namespace) -> dict[str, Any]:
        return icl_regression.probe_run(a.run_dir, a.step, n_batches=a.n_batches, batch_size=a.batch_size)

    def show(r: dict[str, Any], a: argparse.Namespace) -> None:
        w = sys.stdout.write
        w(f"run {r['run_dir']} at step {r['step']}: d = {r['dim']}, {r['sequences']} prompts\n")
        for key, title in [
            ("error_by_k", "tasks of the training distribution"),
            ("fresh_error_by_k", "fresh tasks w ~ N(0, I), outside the pool"),
        ]:
            if key not in r:
                continue
            curves = r[key]
            w(f"normalized error against k, {title}:\n")
            w("  k  " + "".join(f"{n:>15}" for n in curves) + "\n")
            for k in range(len(curves["model"])):
                w(f"{k:3d}  " + "".join(f"{curves[n][k]:15.4f}" for n in curves) + "\n")

    p = _command(
        psub,
        "icl-regression",
        "in-context regression error against k, beside exact baselines (Garg et al. 2022)",
        compute,
        show,
    )
    _add_batches(p, "prompts")


def _task_id(psub: Any) -> None:
    def compute(a: argparse.Namespace) -> dict[str, Any]:
        return task_id.probe_run(a.run_dir, a.step, n_batches=a.n_batches, batch_size=a.batch_size, target=a.target)

    def show(r: dict[str, Any], a: argparse.Namespace) -> None:
        w = sys.stdout.write
        w(
            f"run {r['run_dir']} at step {r['step']}: K = {r['n_tasks']} tasks, {r['n_inputs']} inputs -> "
            f"{r['n_outputs']} outputs, {r['prompts_per_set']} prompts per set\n"
        )
        names = [k for k in r["curves"] if "/acc_by_k/" in k]
        w("accuracy\n  k  " + "".join(f"{n.replace('/acc_by_k', ''):>15}" for n in names) + "\n")
        for k in range(len(r["curves"][names[0]])):
            w(f"{k:3d}  " + "".join(f"{r['curves'][n][k]:15.3f}" for n in names) + "\n")
        for n in names:
            v = r.get(n.replace("acc_by_k", "demos_needed"))
            w(
                f"demos to reach accuracy {r['target']:g}, {n.replace('/acc_by_k', '')}: "
                f"{'not reached' if v is None else f'{v:.2f}'}\n"
            )

    p = _command(
        psub,
        "task-id",
        "task-identification accuracy against the number of demonstrations, beside the exact ideal observers",
        compute,
        show,
    )
    _add_batches(p, "prompts")
    p.add_argument(
        "--target",
        type=float,
        default=task_id.DEFAULT_TARGET,
        help=f"accuracy for 'demonstrations needed' (default {task_id.DEFAULT_TARGET})",
    )


def _fewshot(psub: Any) -> None:
    def compute(a: argparse.Namespace) -> dict[str, Any]:
        return fewshot.probe_run(a.run_dir, a.step, n_batches=a.n_batches, batch_size=a.batch_size)

    def show(r: dict[str, Any], a: argparse.Namespace) -> None:
        w = sys.stdout.write
        src = r["source"]
        w(
            f"run {r['run_dir']} at step {r['step']}: K = {src['n_classes']} classes, L = {src['n_labels']} labels, "
            f"B = {src['burstiness']}, {r['sequences']} sequences per set\n"
        )
        w(f"  {'set':12s}{'accuracy':>10s}{'log p':>10s}{'reference':>12s}\n")
        refs = {"icl": r["icl/nearest_item_accuracy"], "iwl": r["iwl/nearest_centre_accuracy"]}
        for name in ("icl", "iwl", "train_dist", "chance"):
            ref = f"{refs[name]:12.3f}" if name in refs else ""
            w(f"  {name:12s}{r[name + '/accuracy']:10.3f}{r[name + '/logp']:10.3f}{ref}\n")
        w(
            f"  (reference: icl = nearest context item, iwl = nearest true class centre; a uniform guess among the "
            f"context's labels scores {r['icl/context_label_accuracy']:.3f} on icl)\n"
        )

    p = _command(
        psub,
        "fewshot",
        "ICL vs IWL accuracy and log-prob on bursty few-shot classification (Chan et al. 2022; Reddy 2023)",
        compute,
        show,
    )
    _add_batches(p, "sequences")


def _quanta(psub: Any) -> None:
    def compute(a: argparse.Namespace) -> dict[str, Any]:
        return quanta.probe_run(a.run_dir, a.step, examples_per_skill=a.examples_per_skill, threshold=a.threshold)

    def show(r: dict[str, Any], a: argparse.Namespace) -> None:
        sys.stdout.write(
            f"run {r['run_dir']} at step {r['step']}: {r['n_skills']} skills (alpha {r['alpha']:g}), mean loss "
            f"{r['mean_loss']:.4f} (entropy rate {r['entropy_rate']:.4f}), {int(r['skills_learned'])} learned "
            f"(accuracy >= {r['threshold']:g})\n"
        )

    p = _command(psub, "quanta", "per-skill loss and accuracy on a quanta source", compute, show)
    p.add_argument(
        "--examples-per-skill",
        type=int,
        default=quanta.DEFAULT_EXAMPLES,
        help=f"probe examples of each skill (default {quanta.DEFAULT_EXAMPLES})",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=quanta.DEFAULT_THRESHOLD,
        help=f"accuracy at which a skill counts as learned (default {quanta.DEFAULT_THRESHOLD}; chance is 0.5)",
    )


def _linear_probe(psub: Any) -> None:
    def compute(a: argparse.Namespace) -> dict[str, Any]:
        return linear_probe.probe_run(
            a.run_dir,
            a.step,
            latent=a.latent,
            n_sequences=a.n_sequences,
            index=a.index,
            layers=a.layers,
            min_position=a.min_position,
            l2=a.l2,
            max_iter=a.max_iter,
            control_seed=a.control_seed,
        )

    def show(r: dict[str, Any], a: argparse.Namespace) -> None:
        w = sys.stdout.write
        w(
            f"run {r['run_dir']} at step {r['step']}: {r['kind']}, latent {r['latent']}, "
            f"{r['positions']} held-out positions, l2 {r['options']['l2']:g}\n"
        )
        w("layer       acc   control  selectivity\n")
        for i, acc, ctl, sel in zip(r["layers"], r["acc"], r["control"], r["selectivity"], strict=True):
            w(f"{i:5d}  {acc:8.3f}  {ctl:8.3f}  {sel:+11.3f}\n")
        ideal = "-" if r["ideal"] is None else f"{r['ideal']:.3f}"
        w(f"majority class {r['majority']:.3f}, control majority {r['control_majority']:.3f}, ideal {ideal}\n")

    p = _command(
        psub,
        "linear-probe",
        "linear probes with control tasks per layer: accuracy, control accuracy, selectivity (Hewitt & Liang 2019)",
        compute,
        show,
    )
    own = "default: the run's own [instruments.linear_probe] option, else"
    p.add_argument("--latent", default=None, help=f"the source's latent to probe ({own} the source's first)")
    p.add_argument("--n-sequences", type=int, default=None, help=f"fit and held-out sequences, each ({own} 64)")
    p.add_argument("--index", type=int, default=None, help=f"probe-stream batch of the fit set ({own} 0)")
    p.add_argument("--layers", type=int, nargs="+", default=None, help="layers, 0 = embeddings (default: all)")
    p.add_argument("--min-position", type=int, default=None, help=f"first position probed ({own} 0)")
    p.add_argument("--l2", type=float, default=None, help=f"the probe's L2 penalty ({own} 0.01)")
    p.add_argument("--max-iter", type=int, default=None, help=f"L-BFGS iterations ({own} 100)")
    p.add_argument("--control-seed", type=int, default=None, help=f"seed of the control labels ({own} 0)")
