#!/usr/bin/env python3
"""The OSQP C solver on the held-out QPs of `amortize run rlqp` (with `eval.export_qps = true`).

Reads `<run>/qps.jsonl` (one QP per line: sparse triplets for P and A, bounds with null for
infinity) and solves each QP twice with the `osqp` package, one thread, eps_abs = eps_rel = 1e-3:
once at OSQP's defaults (termination checked every 25 iterations) and once with
check_termination = 1 (iterations counted exactly, as amortize counts them). Prints one JSON
line per (class, n): mean iterations, mean seconds per QP (setup + solve), solved fraction.

    python osqp_classes.py runs/rlqp/qps.jsonl

Prints {"solver": "osqp", "skipped": "<reason>"} and exits 0 when numpy, scipy or osqp are
missing.
"""
import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import collections  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402


def main(argv):
    if len(argv) != 2:
        print(__doc__)
        return 2
    try:
        import numpy as np
        import osqp
        import scipy.sparse as sp
    except Exception as exc:  # noqa: BLE001
        print(json.dumps({"solver": "osqp", "skipped": f"not importable: {exc}"}))
        return 0
    kwargs = {"raise_error": False} if "raise_error" in inspect.signature(osqp.OSQP.solve).parameters else {}
    groups = collections.defaultdict(list)
    with open(argv[1]) as f:
        for line in f:
            qp = json.loads(line)
            groups[(qp["class"], qp["n"])].append(qp)
    for (cls, n), qps in groups.items():
        row = {"solver": "osqp", "version": osqp.__version__, "class": cls, "n": n, "instances": len(qps)}
        for label, extra in (("default", {}), ("check1", {"check_termination": 1})):
            iters, secs, solved = [], [], 0
            for qp in qps:
                nv, m = qp["vars"], qp["rows"]
                def mat(trip, rows, cols):
                    if not trip:
                        return sp.csc_matrix((rows, cols))
                    r, c, v = zip(*trip)
                    return sp.csc_matrix((v, (r, c)), shape=(rows, cols))
                p = sp.triu(mat(qp["P"], nv, nv), format="csc")
                a = mat(qp["A"], m, nv)
                l = np.array([-np.inf if v is None else v for v in qp["l"]])
                u = np.array([np.inf if v is None else v for v in qp["u"]])
                t0 = time.perf_counter()
                s = osqp.OSQP()
                s.setup(p, np.array(qp["q"]), a, l, u, verbose=False, eps_abs=1e-3, eps_rel=1e-3, **extra)
                res = s.solve(**kwargs)
                secs.append(time.perf_counter() - t0)
                iters.append(int(res.info.iter))
                solved += str(res.info.status) == "solved"
            row[label] = {"iters_mean": float(np.mean(iters)), "seconds_mean": float(np.mean(secs)),
                          "solved_fraction": solved / len(qps)}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
