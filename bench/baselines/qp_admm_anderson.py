"""Plain ADMM and Anderson acceleration on the `qp-admm` family's map at a chosen step rho.

A classical reference for `amortize run hyper-aa-qp` (docs/reproductions/fixed-points-and-qp.md):
how much of HyperAA's gain over Anderson a different ADMM step already gives. numpy only;
random QPs are drawn like OSQP's random class (n = 10, m = 10 n, density 0.15,
P = M M^T + 1e-2 I, q ~ N(0, I), l = -U(0, 1), u = U(0, 1), no scaling) from numpy's
generator, so they are not the Rust run's instances.

The map: one ADMM iteration on the state s = (y, z, lambda) with sigma = 1e-6, over-relaxation
alpha = 1.6 and a step rho_i per constraint (module `problem::qp_admm`); every positive rho has
the QP's solution as its fixed point. Anderson: memory M = 5, beta = 1, weights
H^-1 1 / 1^T H^-1 1 with H = R R^T + ridge * max diag(R R^T) * I (the `solver::Anderson` form).
Every method is scored on the family's normalised residual ||g(s) - s|| / ||g(0)|| with the
family's rho = 0.1, whatever rho it iterates with.

  --rho 0.1 0.5 ...      scalar steps to try (default 0.1 0.3 0.5 1.0)
  --learned CHECKPOINT   also the per-constraint steps rho_i = 0.1 m_i that the learned
                         preconditioner of a HyperAA or NeuralFP checkpoint on `qp-admm` gives:
                         m_i = exp(6 tanh(u_i / 6)), u_i = MLP(log10 ||a_i|| / 2,
                         log10(tr P / tr A^T A) / 4, equality flag, log10(u_i - l_i) / 6)
Prints one JSON line per (method, rho): median and quartiles of the iterations to 1e-3 (400 at
most) and the solved fraction.
"""

import argparse
import json
import struct

import numpy as np

N, M, SIGMA, ALPHA, FAMILY_RHO = 10, 100, 1e-6, 1.6, 0.1


def random_qp(rng):
    def sparse(rows, cols):
        out = np.zeros(rows * cols)
        idx = rng.choice(rows * cols, round(0.15 * rows * cols), replace=False)
        out[idx] = rng.standard_normal(len(idx))
        return out.reshape(rows, cols)

    mm = sparse(N, N)
    p = mm @ mm.T + 1e-2 * np.eye(N)
    a = sparse(M, N)
    return p, a, rng.standard_normal(N), -rng.random(M), rng.random(M)


def admm_map(qp, rho):
    p, a, q, l, u = qp
    rho = np.broadcast_to(np.asarray(rho, dtype=float), (M,))
    kinv = np.linalg.inv(p + SIGMA * np.eye(N) + a.T @ (rho[:, None] * a))

    def g(s):
        y, z, lam = s[:N], s[N:N + M], s[N + M:]
        yt = kinv @ (SIGMA * y - q + a.T @ (rho * z - lam))
        relaxed = ALPHA * (a @ yt) + (1 - ALPHA) * z
        zn = np.clip(relaxed + lam / rho, l, u)
        return np.concatenate([ALPHA * yt + (1 - ALPHA) * y, zn, lam + rho * (relaxed - zn)])

    return g


def iterations_to(g, g_family, memory, ridge, tol=1e-3, cap=400):
    s = np.zeros(N + 2 * M)
    r0 = np.linalg.norm(g_family(s) - s)
    ys, gs = [], []
    for k in range(cap):
        if np.linalg.norm(g_family(s) - s) <= tol * r0:
            return k
        ys.append(s)
        gs.append(g(s))
        ys, gs = ys[-(memory + 1):], gs[-(memory + 1):]
        if memory == 0 or len(ys) == 1:
            s = gs[-1]
            continue
        r = np.array(gs) - np.array(ys)
        h = r @ r.T
        h = h + ridge * h.diagonal().max() * np.eye(len(ys))
        w = np.linalg.solve(h, np.ones(len(ys)))
        s = (w / w.sum()) @ np.array(gs)
    return None


def load_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size])
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        dtype = {"F32": np.float32, "F64": np.float64}[meta["dtype"]]
        out[name] = np.frombuffer(raw[8 + size + start:8 + size + end], dtype=dtype).reshape(meta["shape"])
    return out


def learned_rho(weights, qp):
    p, a, _, l, u = qp
    width = u - l
    features = np.stack([
        np.log10(np.maximum(np.linalg.norm(a, axis=1), 1e-3)) / 2,
        np.full(M, np.log10(max(np.trace(p), 1e-12) / max((a ** 2).sum(), 1e-12)) / 4),
        (width <= 1e-9).astype(float),
        np.log10(np.clip(width, 1e-6, 1e6)) / 6,
    ], axis=1)
    hidden = np.maximum(features @ weights["precondition.layer0.weight"] + weights["precondition.layer0.bias"], 0)
    out = hidden @ weights["precondition.layer1.weight"] + weights["precondition.layer1.bias"]
    return FAMILY_RHO * np.exp(6 * np.tanh(out[:, 0] / 6))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ridge", type=float, default=1e-3)
    parser.add_argument("--rho", type=float, nargs="*", default=[0.1, 0.3, 0.5, 1.0])
    parser.add_argument("--learned", help="weights.safetensors of a checkpoint with a learned preconditioner")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    qps = [random_qp(rng) for _ in range(args.instances)]
    weights = load_safetensors(args.learned) if args.learned else None
    steps = [(str(r), lambda qp, r=r: r) for r in args.rho]
    if weights is not None:
        steps.append(("learned", lambda qp: learned_rho(weights, qp)))
    for label, rho_of in steps:
        for method, memory in (("plain", 0), ("anderson", 5)):
            its = [iterations_to(admm_map(qp, rho_of(qp)), admm_map(qp, FAMILY_RHO), memory, args.ridge) for qp in qps]
            solved = np.array([i for i in its if i is not None], dtype=float)
            padded = np.array([400 if i is None else i for i in its], dtype=float)
            print(json.dumps({
                "method": method, "rho": label, "instances": len(qps),
                "median_iterations": float(np.median(padded)),
                "quartiles": [float(v) for v in np.percentile(padded, [25, 75])],
                "solved_within_400": len(solved) / len(qps),
            }))


if __name__ == "__main__":
    main()
