#!/usr/bin/env python3
"""OSQP baseline for `amortize bench solvers` (OSQP's "random QP" benchmark class, one thread).

For each n in `--sizes`, `--instances` problems (numpy, `--seed`), m = 10 n:

    minimise 1/2 x'Px + q'x  subject to  l <= Ax <= u,
    P = M M' + 1e-2 I  (M: n x n sparse, density 0.15, N(0, 1) entries),  q ~ N(0, 1)^n,
    A: m x n sparse, density 0.15, N(0, 1) entries,  l = -U(0, 1)^m,  u = U(0, 1)^m.

Each problem is solved once with the `osqp` package at its default settings, eps_abs = eps_rel
= 1e-3 (OSQP's defaults) and verbose off, timing setup + solve and solve alone with
time.perf_counter (instances solved one after the other, the sums reported). The objective is
compared with a reference from OSQP re-run untimed with eps_abs = eps_rel = 1e-9, polishing on
and max_iter 100000 (once more with adaptive rho off when that does not end "solved"; counted
in "ref_retries"): relative error |obj - obj_ref| / max(1, |obj_ref|), both objectives computed
in float64 from the returned x. The primal residual is ||Ax - proj_[l,u](Ax)||_inf.

    python osqp_qp.py [--sizes 10,50,100] [--instances 1000] [--seed 0]

prints one JSON line per size on stdout:

    {"solver": "osqp", "version": "1.1.3", "n": 10, "m": 100, "instances": 1000,
     "iters_mean": ..., "iters_median": ..., "iters_max": ..., "setup_solve_seconds_total": ...,
     "solve_seconds_total": ..., "status_counts": {"solved": 1000}, "rel_obj_err_mean": ...,
     "rel_obj_err_max": ..., "prim_res_max": ..., ...}

or, when numpy, scipy or osqp cannot be imported, exactly one line and exit status 0:

    {"solver": "osqp", "skipped": "<reason>"}

Handles both osqp >= 1.0 (`solve(raise_error=...)`, setting `polishing`) and older releases
(`solve()`, setting `polish`). Baselines only: nothing in the product imports or needs this file.
"""

import os

# One thread, set before numpy / scipy / osqp are imported.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import collections  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

DENSITY = 0.15
P_SHIFT = 1e-2
EPS = 1e-3
REF_EPS = 1e-9
REF_MAX_ITER = 100000


def emit(obj):
    print(json.dumps(obj), flush=True)


def make_problem(np, sp, rng, n):
    """(P_full, P_upper, q, A, l, u): P matrices and A in CSC format, vectors float64."""
    m = 10 * n
    mat = sp.random(n, n, density=DENSITY, format="csc", random_state=rng,
                    data_rvs=rng.standard_normal)
    p_full = (mat @ mat.T + P_SHIFT * sp.identity(n)).tocsc()
    q = rng.standard_normal(n)
    a = sp.random(m, n, density=DENSITY, format="csc", random_state=rng,
                  data_rvs=rng.standard_normal)
    l = -rng.random(m)
    u = rng.random(m)
    return p_full, sp.triu(p_full, format="csc"), q, a, l, u


class Osqp:
    """Version-tolerant wrapper: setup(), solve() -> (x, iterations, status, rho_updates)."""

    def __init__(self, osqp):
        self.osqp = osqp
        self.version = osqp.__version__
        major = int(self.version.split(".")[0])
        self.polish_key = "polishing" if major >= 1 else "polish"
        params = inspect.signature(osqp.OSQP.solve).parameters
        self.solve_kwargs = {"raise_error": False} if "raise_error" in params else {}

    def setup(self, problem, **settings):
        _, p_upper, q, a, l, u = problem
        solver = self.osqp.OSQP()
        solver.setup(p_upper, q, a, l, u, verbose=False, **settings)
        return solver

    def solve(self, solver):
        return solver.solve(**self.solve_kwargs)

    def reference(self, problem):
        """(result, retried): the tight-tolerance solve, run again with adaptive rho off when
        it does not end "solved" (osqp 1.1.3 stalls with adaptive rho on rare instances)."""
        settings = {"eps_abs": REF_EPS, "eps_rel": REF_EPS, self.polish_key: True,
                    "max_iter": REF_MAX_ITER}
        res = self.solve(self.setup(problem, **settings))
        if str(res.info.status) == "solved":
            return res, False
        return self.solve(self.setup(problem, adaptive_rho=False, **settings)), True


def objective(problem, x):
    p_full, _, q, _, _, _ = problem
    return float(0.5 * x @ (p_full @ x) + q @ x)


def prim_residual(np, problem, x):
    _, _, _, a, l, u = problem
    ax = a @ x
    return float(np.max(np.abs(ax - np.clip(ax, l, u))))


def run_size(np, sp, solver, n, instances, seed):
    rng = np.random.default_rng([seed, n])
    problems = [make_problem(np, sp, rng, n) for _ in range(instances)]
    iters, rho_updates, rel_errs, prim_res = [], [], [], []
    status, ref_status = collections.Counter(), collections.Counter()
    setup_solve_total = solve_total = 0.0
    ref_retries = 0
    for problem in problems:
        t0 = time.perf_counter()
        handle = solver.setup(problem, eps_abs=EPS, eps_rel=EPS)
        t1 = time.perf_counter()
        res = solver.solve(handle)
        t2 = time.perf_counter()
        setup_solve_total += t2 - t0
        solve_total += t2 - t1
        iters.append(int(res.info.iter))
        status[str(res.info.status)] += 1
        if getattr(res.info, "rho_updates", None) is not None:
            rho_updates.append(int(res.info.rho_updates))
        x = np.asarray(res.x, dtype=np.float64)
        prim_res.append(prim_residual(np, problem, x))

        ref, retried = solver.reference(problem)
        ref_status[str(ref.info.status)] += 1
        ref_retries += retried
        obj_ref = objective(problem, np.asarray(ref.x, dtype=np.float64))
        rel_errs.append(abs(objective(problem, x) - obj_ref) / max(1.0, abs(obj_ref)))
    return {
        "solver": "osqp",
        "version": solver.version,
        "n": n,
        "m": 10 * n,
        "instances": instances,
        "seed": seed,
        "iters_mean": float(statistics.mean(iters)),
        "iters_median": statistics.median(iters),
        "iters_max": max(iters),
        "setup_solve_seconds_total": setup_solve_total,
        "solve_seconds_total": solve_total,
        "status_counts": dict(status),
        "rho_updates_mean": float(statistics.mean(rho_updates)) if rho_updates else None,
        "rho_updates_max": max(rho_updates) if rho_updates else None,
        "rel_obj_err_mean": float(np.nanmean(rel_errs)),
        "rel_obj_err_max": float(np.nanmax(rel_errs)),
        "prim_res_max": float(np.nanmax(prim_res)),
        "ref_status_counts": dict(ref_status),
        "ref_retries": ref_retries,
    }


def parse_sizes(text):
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or any(n <= 0 for n in sizes):
        raise argparse.ArgumentTypeError(f"bad size list: {text!r}")
    return sizes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=parse_sizes, default=[10, 50, 100],
                        help="comma-separated n (m = 10 n)")
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.instances <= 0:
        parser.error("--instances must be positive")
    try:
        import numpy as np
        import osqp
        import scipy.sparse as sp
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install (OSError, ...)
        emit({"solver": "osqp", "skipped": f"not importable: {type(exc).__name__}: {exc}"})
        return 0
    solver = Osqp(osqp)
    for n in args.sizes:
        emit(run_size(np, sp, solver, n, args.instances, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
