"""Anderson acceleration on the elastic-net ISTA map, with and without a Jacobi preconditioner.

A classical reference for `amortize run neural-fp` (docs/reproductions/fixed-points-and-qp.md):
how much of a learned accelerator's gain over Anderson a fixed diagonal preconditioner of the
map already gives. numpy only; instances are drawn like the `elastic-net-ista` family
(A 25 x 25 with N(0, 1) entries at density 0.1, b ~ N(0, I), l1 = 0.1, l2 = 0.05,
t = 1 / (||A||_2^2 + l2)) from numpy's generator, so they are not the Rust run's instances.

Maps (each has the elastic net's solution as its fixed point):
  ista     g(y)   = S_{t l1}(y - t (A^T (A y - b) + l2 y))   (the family's map)
  jacobi   g_D(y) = S_{d l1}(y - d (A^T (A y - b) + l2 y)),  d_i = 1 / H_ii, H = A^T A + l2 I
Anderson: memory M (default 5), beta = 1, weights H^-1 1 / 1^T H^-1 1 with
H = R R^T + ridge * max diag(R R^T) * I (the `solver::Anderson` form, ridge 1e-3).
  learned  (with --learned CHECKPOINT) the map with the per-coordinate steps d_i = t m_i that the
           learned preconditioner of a NeuralFP or HyperAA checkpoint (`model.precondition = true`)
           gives, m_i = exp(6 tanh(u_i / 6)), u_i = MLP(log10(t H_ii) / 2, H_ii / sum_j |H_ij|):
           Anderson on the learned map alone, without the rest of the model.
Every method is scored on the family's normalised residual ||g(y) - y|| / ||g(0)||.
Prints one JSON line per method: mean and median at iterations 10, 25, 50, 100, and the median
number of iterations to 1e-4 (over the instances solved within 100) with the solved fraction.
"""

import argparse
import json
import struct

import numpy as np


def soft(v, tau):
    return np.sign(v) * np.maximum(np.abs(v) - tau, 0.0)


def anderson(g, n, iterations, memory, ridge):
    ys, gs, y, out = [], [], np.zeros(n), [np.zeros(n)]
    for _ in range(iterations):
        ys.append(y)
        gs.append(g(y))
        ys, gs = ys[-(memory + 1):], gs[-(memory + 1):]
        r = np.array(gs) - np.array(ys)
        h = r @ r.T
        h = h + ridge * max(np.diag(h).max(), 1e-300) * np.eye(len(h))
        z = np.linalg.lstsq(h, np.ones(len(h)), rcond=None)[0]
        y = (z / z.sum()) @ np.array(gs)
        out.append(y)
    return out


def load_preconditioner(path):
    """The learned step multipliers of a NeuralFP checkpoint (weights.safetensors, f32)."""
    blob = open(path, "rb").read()
    size = struct.unpack("<Q", blob[:8])[0]
    header, data = json.loads(blob[8:8 + size]), blob[8 + size:]
    w = {}
    for name, v in header.items():
        if name.startswith("precondition."):
            if v["dtype"] != "F32":
                raise SystemExit(f"{path}: {name} is {v['dtype']}, expected F32")
            start, end = v["data_offsets"]
            w[name] = np.frombuffer(data[start:end], np.float32).reshape(v["shape"]).astype(float)
    layers = sorted({k.split(".")[1] for k in w})
    if not layers:
        raise SystemExit(f"{path}: no precondition.* tensors (trained with model.precondition?)")

    def multipliers(context):
        z = context
        for i, layer in enumerate(layers):
            z = z @ w[f"precondition.{layer}.weight"] + w[f"precondition.{layer}.bias"]
            if i + 1 < len(layers):
                z = np.maximum(z, 0.0)
        return np.exp(6.0 * np.tanh(z[:, 0] / 6.0))

    return multipliers


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instances", type=int, default=300)
    p.add_argument("--memory", type=int, default=5)
    p.add_argument("--ridge", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--learned", metavar="CHECKPOINT",
                   help="weights.safetensors of a NeuralFP or HyperAA run with model.precondition = true")
    a = p.parse_args()
    learned = load_preconditioner(a.learned) if a.learned else None
    rng = np.random.default_rng(a.seed)
    m = n = 25
    l1, l2, iterations, marks = 0.1, 0.05, 100, (10, 25, 50, 100)
    curves = {"ista": [], "jacobi": []} | ({"learned": []} if learned else {})
    for _ in range(a.instances):
        A = rng.standard_normal((m, n)) * (rng.random((m, n)) < 0.1)
        b = rng.standard_normal(m)
        H = A.T @ A + l2 * np.eye(n)
        t = 1.0 / (np.linalg.norm(A, 2) ** 2 + l2)

        def step(d):
            return lambda y: soft(y - d * (A.T @ (A @ y - b) + l2 * y), d * l1)

        g = step(np.full(n, t))
        r0 = max(np.linalg.norm(g(np.zeros(n))), 1e-12)
        steps = [("ista", np.full(n, t)), ("jacobi", 1.0 / np.diag(H))]
        if learned:
            hd = np.diag(H)
            context = np.c_[np.log10(t * hd) / 2.0, hd / np.abs(H).sum(axis=1)]
            steps.append(("learned", t * learned(context)))
        for name, d in steps:
            iterates = anderson(step(d), n, iterations, a.memory, a.ridge)
            curves[name].append([np.linalg.norm(g(y) - y) / r0 for y in iterates])
    for name, c in curves.items():
        c = np.array(c)
        reached = c <= 1e-4
        solved = reached.any(axis=1)
        first = reached.argmax(axis=1)[solved]
        print(json.dumps({
            "method": f"anderson-{name}",
            "memory": a.memory,
            "instances": a.instances,
            **{f"mean_at_{k}": float(c[:, k].mean()) for k in marks},
            **{f"median_at_{k}": float(np.median(c[:, k])) for k in marks},
            "median_iterations_to_1e-4": float(np.median(first)) if solved.any() else None,
            "solved_within_100": float(solved.mean()),
        }))


if __name__ == "__main__":
    main()
