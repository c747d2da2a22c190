#!/usr/bin/env python3
"""The OSQP C solver on the held-out QPs of `amortize run rlqp` (with `eval.export_qps = true`),
side by side with the run's learned rho.

    python osqp_classes.py RUN_DIR [--repeats 3]      # RUN_DIR holds qps.jsonl (or give its path)

Reads `qps.jsonl` (one QP per line: sparse triplets for P and A, bounds with null for infinity)
and solves each QP with the `osqp` package, one thread, eps_abs = eps_rel = 1e-3, in three
configurations: OSQP's defaults (termination checked every 25 iterations), check_termination =
1 (iterations counted exactly, as amortize counts them) and check_termination = 5 (the
intervals at which `run rlqp` times both of its methods). Each QP is solved
`--repeats` times per configuration, the configurations alternating; its time is the median of
OSQP's own timers, setup_time + solve_time (scaling, KKT assembly, ordering, factorisation and
iterations; no Python overhead), the same span amortize times for its solves.

Prints one JSON line per (class, n) with mean iterations, mean seconds per QP (OSQP's timers,
and Python's wall-clock around setup + solve) and solved fraction per configuration.

When the run's tables sit beside qps.jsonl (`rlqp.csv`: the shared policy; `rlqp-per-class.csv`:
the class-specific policies, same QPs), it also prints a markdown table per policy and writes
`osqp-c.csv` there (atomically). Ratios are taken conservatively for the learned rho: iterations
and time each against the smallest of OSQP C's three configurations' means (iterations: usually
the exact count of check_termination = 1, as the others' counts are multiples of 5 or 25). "both" marks
a cell where the learned rho needs >= 3x fewer iterations and is >= 2x faster, with every QP
solved by both.

Prints {"solver": "osqp", "skipped": "<reason>"} and exits 0 when numpy, scipy or osqp are
missing.
"""
import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import collections  # noqa: E402
import csv  # noqa: E402
import inspect  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

CONFIGS = (("default", {}), ("check1", {"check_termination": 1}), ("check5", {"check_termination": 5}))


QP_KEYS = ("class", "n", "vars", "rows", "P", "q", "A", "l", "u")


def load_qps(path):
    groups = collections.defaultdict(list)
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                qp = json.loads(line)
                missing = [k for k in QP_KEYS if k not in qp] if isinstance(qp, dict) else ["an object"]
                if missing:
                    raise ValueError(f"missing {', '.join(missing)}")
                groups[(qp["class"], int(qp["n"]))].append(qp)
            except (ValueError, TypeError) as exc:
                raise SystemExit(f"{path}:{number}: not a QP line ({exc})")
    return groups


def matrices(qp, np, sp):
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
    return p, np.array(qp["q"], dtype=float), a, l, u


def solve_group(qps, repeats, osqp, np, sp):
    """Per configuration: lists over QPs of (iterations, OSQP-timer seconds, wall seconds, solved)."""
    kwargs = {"raise_error": False} if "raise_error" in inspect.signature(osqp.OSQP.solve).parameters else {}
    out = {label: [] for label, _ in CONFIGS}
    for qp in qps:
        data = matrices(qp, np, sp)
        runs = {label: [] for label, _ in CONFIGS}
        for _ in range(repeats):
            for label, extra in CONFIGS:
                t0 = time.perf_counter()
                s = osqp.OSQP()
                s.setup(*data, verbose=False, eps_abs=1e-3, eps_rel=1e-3, **extra)
                res = s.solve(**kwargs)
                wall = time.perf_counter() - t0
                info = res.info
                runs[label].append((int(info.iter), info.setup_time + info.solve_time, wall,
                                    str(info.status) == "solved"))
        for label, rs in runs.items():
            out[label].append((rs[0][0], statistics.median(r[1] for r in rs),
                               statistics.median(r[2] for r in rs), rs[0][3]))
    return out


def summary(per_qp):
    k = len(per_qp)
    return {"iters_mean": sum(r[0] for r in per_qp) / k,
            "seconds_mean": sum(r[1] for r in per_qp) / k,
            "wall_seconds_mean": sum(r[2] for r in per_qp) / k,
            "solved_fraction": sum(r[3] for r in per_qp) / k}


CELL_KEYS = ("class", "n", "learned_iters", "learned_seconds", "learned_solved", "osqp_iters", "osqp_seconds")


def read_cells(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for number, row in enumerate(rows, 2):
        missing = [k for k in CELL_KEYS if not row.get(k)]
        if missing:
            raise SystemExit(f"{path}:{number}: missing {', '.join(missing)}")
        if float(row["learned_iters"]) <= 0 or float(row["learned_seconds"]) <= 0:
            raise SystemExit(f"{path}:{number}: learned iterations and seconds must be > 0")
    return {(row["class"], int(row["n"])): row for row in rows}


def joined(policy, cells, c_rows):
    rows = []
    for key, c in c_rows.items():
        cell = cells.get(key)
        if cell is None:
            continue
        learned_iters, learned_seconds = float(cell["learned_iters"]), float(cell["learned_seconds"])
        c_best = min(c[label]["seconds_mean"] for label, _ in CONFIGS)
        c_iters = min(c[label]["iters_mean"] for label, _ in CONFIGS)
        it_ratio = c_iters / learned_iters
        time_ratio = c_best / learned_seconds
        all_solved = min(c[label]["solved_fraction"] for label, _ in CONFIGS) == 1 and float(cell["learned_solved"]) == 1
        rows.append({"policy": policy, "class": key[0], "n": key[1],
                     "osqp_c_iters_check1": c["check1"]["iters_mean"],
                     "osqp_c_iters_default": c["default"]["iters_mean"],
                     "learned_iters": learned_iters, "iteration_ratio": it_ratio,
                     "osqp_c_seconds_check1": c["check1"]["seconds_mean"],
                     "osqp_c_seconds_check5": c["check5"]["seconds_mean"],
                     "osqp_c_seconds_default": c["default"]["seconds_mean"],
                     "learned_seconds": learned_seconds, "time_ratio": time_ratio,
                     "osqp_c_solved": min(c[label]["solved_fraction"] for label, _ in CONFIGS),
                     "learned_solved": float(cell["learned_solved"]),
                     "ours_osqp_rule_iters": float(cell["osqp_iters"]),
                     "ours_osqp_rule_seconds": float(cell["osqp_seconds"]),
                     "both_targets": bool(all_solved and it_ratio >= 3 and time_ratio >= 2)})
    return rows


def markdown(title, rows):
    lines = [f"\n{title}\n",
             "| class | n | OSQP C iters (exact / default) | learned iters | iteration ratio | "
             "OSQP C s/QP (check every 1 / 5 / 25) | learned s/QP | time ratio | both |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['class']} | {r['n']} | {r['osqp_c_iters_check1']:.1f} / {r['osqp_c_iters_default']:.1f} | "
            f"{r['learned_iters']:.1f} | {r['iteration_ratio']:.2f} | {r['osqp_c_seconds_check1']:.3g} / "
            f"{r['osqp_c_seconds_check5']:.3g} / {r['osqp_c_seconds_default']:.3g} | {r['learned_seconds']:.3g} | {r['time_ratio']:.2f} | "
            f"{'yes' if r['both_targets'] else 'no'} |")
    return "\n".join(lines)


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the run directory (or its qps.jsonl)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv[1:])
    path = args.run if args.run.endswith(".jsonl") else os.path.join(args.run, "qps.jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"{path}: no such file (run with eval.export_qps = true)")
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    try:
        import numpy as np
        import osqp
        import scipy.sparse as sp
    except Exception as exc:  # noqa: BLE001
        print(json.dumps({"solver": "osqp", "skipped": f"not importable: {exc}"}))
        return 0
    c_rows = {}
    for (cls, n), qps in load_qps(path).items():
        per = solve_group(qps, args.repeats, osqp, np, sp)
        row = {"solver": "osqp", "version": osqp.__version__, "class": cls, "n": n, "instances": len(qps)}
        row.update({label: summary(per[label]) for label, _ in CONFIGS})
        c_rows[(cls, n)] = row
        print(json.dumps(row), flush=True)
    run_dir = os.path.dirname(os.path.abspath(path))
    rows = []
    for policy, name, title in (("shared", "rlqp.csv", "Shared policy against OSQP C"),
                                ("class-specific", "rlqp-per-class.csv",
                                 "Class-specific policies against OSQP C")):
        cells = read_cells(os.path.join(run_dir, name))
        if cells is not None:
            part = joined(policy, cells, c_rows)
            rows.extend(part)
            print(markdown(title, part))
    if rows:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(os.path.join(run_dir, "osqp-c.csv"), buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
