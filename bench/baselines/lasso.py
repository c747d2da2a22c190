#!/usr/bin/env python3
"""Lasso baseline for `amortize bench solvers` (JAX FISTA and ISTA, CPU, one thread by default).

Instance class (numpy, `--seed`): a dictionary W (64 x 256, i.i.d. N(0, 1), columns scaled to
unit norm), `--batch` codes y_true with entries Bernoulli(0.1) * N(0, 1), and signals
x = W y_true + 0.01 * N(0, 1). Each signal defines the Lasso problem

    E(y; x) = 1/2 ||x - W y||^2 + alpha ||y||_1,        step s = 1 / sigma_max(W)^2.

A float64 numpy FISTA with O'Donoghue-Candes gradient restart gives the reference optimum
E*(x) (per instance, until the gradient-mapping norm is <= 1e-10 or 20000 iterations; untimed).
Then, for plain FISTA (Beck-Teboulle momentum, no restart) and ISTA, both from y = 0 and jitted
in JAX, the script finds K, the first iteration at which the mean relative gap
(E(y_k) - E*) / E* over the batch is <= `--target` (objectives evaluated in float64 on the host,
untimed), and times a jitted `lax.fori_loop` of exactly K iterations on the whole batch
(median of `--repeats` calls after one warm-up/compile call).

    python lasso.py [--batch 1024] [--target 1e-4] [--dtype {f32,f64}] [--threads {1,all}]
                    [--repeats 5] [--seed 0] [--alpha 0.1] [--iters-only]

prints one JSON line per method on stdout:

    {"method": "fista", "framework": "jax", "dtype": "f32", "batch": 1024, "target": 0.0001,
     "iters": 105, "seconds": 0.063, "gap_at_16": 0.11, "iters_to_1e-3": 62, ...}

(`iters` and `iters_to_1e-3` are null when not reached within `--max-iters`; `seconds` is null
with `--iters-only`), or, when numpy or jax cannot be imported, exactly one line and exit 0:

    {"framework": "jax", "skipped": "<reason>"}

Reference-solver diagnostics go to stderr. Baselines only: nothing in the product imports or
needs this file.
"""

import argparse
import json
import os
import statistics
import sys
import time

DIM_X, DIM_Y = 64, 256
DENSITY = 0.1
NOISE = 0.01
REF_TOL = 1e-10
REF_MAX_ITERS = 20000
REF_CHECK_EVERY = 10
CHUNK = 100
METHODS = ("fista", "ista")


def emit(obj):
    print(json.dumps(obj), flush=True)


def log(msg):
    print(f"lasso.py: {msg}", file=sys.stderr, flush=True)


def configure_threads(threads):
    """One thread unless `threads == "all"`; must run before numpy / jax are imported."""
    if threads == "all":
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    os.environ["XLA_FLAGS"] = (
        "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1 "
        + os.environ.get("XLA_FLAGS", "")
    ).strip()
    # The flags above do not stop XLA's CPU runtime from running independent work on other
    # cores (measured 2026-11-27, jax 0.10.2: ISTA 0.34 s unpinned vs 0.61 s pinned on this
    # 2-core machine), so the process is pinned to one core as well.
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


# --------------------------------------------------------------------------- data and reference


def make_instances(np, batch, seed):
    """(W (64, 256), X (batch, 64)), float64; one signal per row."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((DIM_X, DIM_Y))
    w /= np.linalg.norm(w, axis=0, keepdims=True)
    y_true = (rng.random((batch, DIM_Y)) < DENSITY) * rng.standard_normal((batch, DIM_Y))
    x = y_true @ w.T + NOISE * rng.standard_normal((batch, DIM_X))
    return w, x


def objectives(np, w, x, y, alpha):
    """E(y; x) per instance in float64; y may carry leading iteration axes."""
    y = np.asarray(y, dtype=np.float64)
    r = y @ w.T - x
    return 0.5 * np.sum(r * r, axis=-1) + alpha * np.sum(np.abs(y), axis=-1)


def soft_threshold(np, v, tau):
    return np.sign(v) * np.maximum(np.abs(v) - tau, 0.0)


def reference_optimum(np, w, x, alpha, step):
    """Float64 FISTA with gradient restart, per instance until ||G_s(y)|| <= REF_TOL.

    Returns (y*, iterations used per instance, final gradient-mapping norms).
    """
    batch = x.shape[0]
    y_out = np.zeros((batch, DIM_Y))
    iters = np.full(batch, REF_MAX_ITERS)
    gmap = np.full(batch, np.inf)
    active = np.arange(batch)
    xa = x
    y = np.zeros((batch, DIM_Y))
    z = y.copy()
    t = np.ones(batch)
    for k in range(1, REF_MAX_ITERS + 1):
        grad = (z @ w.T - xa) @ w
        y_new = soft_threshold(np, z - step * grad, step * alpha)
        restart = np.sum((z - y_new) * (y_new - y), axis=1) > 0.0
        t_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        beta = np.where(restart, 0.0, (t - 1.0) / t_new)
        t = np.where(restart, 1.0, t_new)
        z = y_new + beta[:, None] * (y_new - y)
        y = y_new
        if k % REF_CHECK_EVERY and k != REF_MAX_ITERS:
            continue
        grad_y = (y @ w.T - xa) @ w
        norms = np.linalg.norm(y - soft_threshold(np, y - step * grad_y, step * alpha), axis=1) / step
        done = norms <= REF_TOL
        if k == REF_MAX_ITERS:
            done[:] = True
        y_out[active[done]] = y[done]
        iters[active[done]] = k
        gmap[active[done]] = norms[done]
        keep = ~done
        active, xa, y, z, t = active[keep], xa[keep], y[keep], z[keep], t[keep]
        if active.size == 0:
            break
    return y_out, iters, gmap


# --------------------------------------------------------------------------- JAX solvers


def jax_solvers(jax, jnp, dtype):
    """{method: (init(n_batch) -> state, step(state, w, x, s, tau) -> state, iterate(state) -> y)}."""

    def prox_grad(v, w, x, s, tau):
        u = v - s * ((v @ w.T - x) @ w)
        return jnp.sign(u) * jnp.maximum(jnp.abs(u) - tau, 0.0)

    def fista_init(batch):
        zeros = jnp.zeros((batch, DIM_Y), dtype)
        return zeros, zeros, jnp.ones((), dtype)  # (y_{k-1}, z_k, t_k)

    def fista_step(state, w, x, s, tau):
        y_prev, z, t = state
        y = prox_grad(z, w, x, s, tau)
        t_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        z_next = y + ((t - 1.0) / t_next) * (y - y_prev)
        return y, z_next, t_next

    def ista_init(batch):
        return (jnp.zeros((batch, DIM_Y), dtype),)

    def ista_step(state, w, x, s, tau):
        return (prox_grad(state[0], w, x, s, tau),)

    return {
        "fista": (fista_init, fista_step, lambda state: state[0]),
        "ista": (ista_init, ista_step, lambda state: state[0]),
    }


def make_trace(jax, step, iterate, chunk):
    """Jitted (state, w, x, s, tau) -> (state, iterates of the next `chunk` steps)."""

    def run(state, w, x, s, tau):
        def body(carry, _):
            carry = step(carry, w, x, s, tau)
            return carry, iterate(carry)

        return jax.lax.scan(body, state, None, length=chunk)

    return jax.jit(run)


def make_fixed(jax, init, step, iterate, iters, batch):
    """Jitted (w, x, s, tau) -> y after exactly `iters` steps from y = 0."""

    def run(w, x, s, tau):
        state = jax.lax.fori_loop(0, iters, lambda _, st: step(st, w, x, s, tau), init(batch))
        return iterate(state)

    return jax.jit(run)


def first_at_most(gaps, level):
    """Smallest k (1-based) with gaps[k-1] <= level, or None."""
    for k, g in enumerate(gaps, start=1):
        if g <= level:
            return k
    return None


# --------------------------------------------------------------------------- main


def run(args):
    try:
        import numpy as np
        import jax
        import jax.numpy as jnp
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install (OSError, ...)
        emit({"framework": "jax", "skipped": f"not importable: {type(exc).__name__}: {exc}"})
        return 0
    if args.dtype == "f64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if args.dtype == "f64" else jnp.float32
    np_dtype = np.float64 if args.dtype == "f64" else np.float32

    w, x = make_instances(np, args.batch, args.seed)
    step = 1.0 / np.linalg.norm(w, 2) ** 2
    t0 = time.perf_counter()
    y_star, ref_iters, ref_gmap = reference_optimum(np, w, x, args.alpha, step)
    e_star = objectives(np, w, x, y_star, args.alpha)
    log(
        f"reference: {time.perf_counter() - t0:.1f} s, iterations median "
        f"{int(np.median(ref_iters))} max {int(ref_iters.max())}, "
        f"{int(np.sum(ref_gmap > REF_TOL))} of {args.batch} above tol {REF_TOL:g} "
        f"(max gradient-mapping norm {ref_gmap.max():.2e}), mean E* {e_star.mean():.6f}"
    )

    w_dev = jnp.asarray(w.astype(np_dtype))
    x_dev = jnp.asarray(x.astype(np_dtype))
    s_dev = jnp.asarray(step, dtype)
    tau_dev = jnp.asarray(step * args.alpha, dtype)
    levels = sorted({args.target, 1e-3})
    for method, (init, step_fn, iterate) in jax_solvers(jax, jnp, dtype).items():
        trace = make_trace(jax, step_fn, iterate, CHUNK)
        state = init(args.batch)
        gaps = []
        while len(gaps) < args.max_iters:
            state, ys = trace(state, w_dev, x_dev, s_dev, tau_dev)
            rel = (objectives(np, w, x, np.asarray(ys), args.alpha) - e_star) / e_star
            gaps.extend(float(g) for g in rel.mean(axis=1))
            if len(gaps) >= 16 and all(first_at_most(gaps, lv) for lv in levels):
                break
        gaps = gaps[: args.max_iters]
        iters = first_at_most(gaps, args.target)
        seconds = None
        if iters is not None and not args.iters_only:
            fixed = make_fixed(jax, init, step_fn, iterate, iters, args.batch)
            fixed(w_dev, x_dev, s_dev, tau_dev).block_until_ready()
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fixed(w_dev, x_dev, s_dev, tau_dev).block_until_ready()
                times.append(time.perf_counter() - t0)
            seconds = statistics.median(times)
        emit(
            {
                "method": method,
                "framework": "jax",
                "version": jax.__version__,
                "dtype": args.dtype,
                "threads": args.threads,
                "batch": args.batch,
                "alpha": args.alpha,
                "seed": args.seed,
                "target": args.target,
                "iters": iters,
                "seconds": seconds,
                "repeats": None if seconds is None else args.repeats,
                "gap_at_16": gaps[15] if len(gaps) >= 16 else None,
                "iters_to_1e-3": first_at_most(gaps, 1e-3),
            }
        )
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--target", type=float, default=1e-4,
                        help="mean relative objective gap that defines the iteration count")
    parser.add_argument("--alpha", type=float, default=0.1, help="l1 weight")
    parser.add_argument("--dtype", choices=("f32", "f64"), default="f32")
    parser.add_argument("--threads", choices=("1", "all"), default="1",
                        help="'1' pins numpy/XLA to one thread, 'all' keeps their defaults")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-iters", type=int, default=5000,
                        help="longest gap curve recorded per method")
    parser.add_argument("--iters-only", action="store_true", help="skip the timing")
    args = parser.parse_args(argv)
    if args.batch <= 0 or args.repeats <= 0 or args.max_iters < 16:
        parser.error("--batch and --repeats must be positive, --max-iters at least 16")
    if not (args.target > 0.0 and args.alpha > 0.0):
        parser.error("--target and --alpha must be positive")
    configure_threads(args.threads)
    os.environ["JAX_PLATFORMS"] = "cpu"
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
