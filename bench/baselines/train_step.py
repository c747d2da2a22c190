#!/usr/bin/env python3
"""Train-step baseline for `amortize bench train-step` (JAX and PyTorch, CPU, one thread).

Times one Adam training step of the sphere benchmark's MLP (16 -> 128 -> 128 -> 3, ReLU,
output normalised onto the unit sphere) at several batch sizes, float32, on one thread.

    python train_step.py --framework {jax,torch} --batches 8,256,4096 --repeats 50

prints one JSON line per batch size on stdout:

    {"framework": "jax", "batch": 8, "median_seconds": 0.00013, "repeats": 50}

or, when the framework cannot be imported, exactly one line and exit status 0:

    {"framework": "torch", "skipped": "<reason>"}

    python train_step.py --check [--batch 256] [--steps 3]

computes the loss of the first steps from the same parameters (numpy seed 0) and the same
batch with a numpy reference and with every framework that imports, prints them as JSON
lines, and exits 1 when they disagree.

Baselines only: nothing in the product imports or needs this file.
"""

import os

# One thread, set before numpy / jax / torch are imported.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ["XLA_FLAGS"] = (
    "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1 "
    + os.environ.get("XLA_FLAGS", "")
).strip()
os.environ["JAX_PLATFORMS"] = "cpu"
# The thread flags above do not stop XLA's CPU runtime from using other cores (seen with the
# Lasso baseline: 0.34 s unpinned vs 0.61 s pinned), so the process is pinned to one core.
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

IN_DIM, HIDDEN, OUT_DIM = 16, 128, 3
LAYERS = ((IN_DIM, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, OUT_DIM))
N_TARGETS = 4
ALPHA_SCALE = 0.7
GAMMA = 0.5
CLIP = 1e-6
LR, BETA1, BETA2, EPS = 1e-3, 0.9, 0.999, 1e-8
WARMUP = 10
PARAM_SEED = 0
DATA_SEED = 1


def emit(obj):
    print(json.dumps(obj), flush=True)


# --------------------------------------------------------------------------- data


def init_params(np):
    """[(W (fan_in, fan_out), b (fan_out,))], all U(-1/sqrt(fan_in), 1/sqrt(fan_in)), float32."""
    rng = np.random.default_rng(PARAM_SEED)
    params = []
    for fan_in, fan_out in LAYERS:
        bound = 1.0 / math.sqrt(fan_in)
        w = rng.uniform(-bound, bound, size=(fan_in, fan_out)).astype(np.float32)
        b = rng.uniform(-bound, bound, size=(fan_out,)).astype(np.float32)
        params.append((w, b))
    return params


def sample_batch(np, batch):
    """Contexts (batch, 16): z_1..z_4 unit vectors in R^3 (row-major), then alpha_1..alpha_4."""
    rng = np.random.default_rng(DATA_SEED + batch)
    z = rng.standard_normal((batch, N_TARGETS, 3))
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    alpha = ALPHA_SCALE * rng.uniform(0.0, 1.0, size=(batch, N_TARGETS))
    return np.concatenate([z.reshape(batch, 3 * N_TARGETS), alpha], axis=1).astype(np.float32)


def numpy_loss(np, params, x):
    """Reference loss in float64 numpy."""
    h = x.astype(np.float64)
    for i, (w, b) in enumerate(params):
        h = h @ w.astype(np.float64) + b.astype(np.float64)
        if i + 1 < len(params):
            h = np.maximum(h, 0.0)
    u = h / np.linalg.norm(h, axis=1, keepdims=True)
    z = x[:, : 3 * N_TARGETS].astype(np.float64).reshape(-1, N_TARGETS, 3)
    alpha = x[:, 3 * N_TARGETS :].astype(np.float64)
    c = np.einsum("bj,bij->bi", u, z)
    d = np.arccos(np.clip(c, -1.0 + CLIP, 1.0 - CLIP))
    a = 0.5 * d * d + alpha
    s = -a / GAMMA
    m = s.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(s - m).sum(axis=1))
    return float(np.mean(-GAMMA * lse))


# --------------------------------------------------------------------------- JAX


class JaxStep:
    name = "jax"

    def __init__(self):
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp

        def loss_fn(params, x):
            h = x
            for i, (w, b) in enumerate(params):
                h = h @ w + b
                if i + 1 < len(params):
                    h = jax.nn.relu(h)
            u = h / jnp.linalg.norm(h, axis=1, keepdims=True)
            z = x[:, : 3 * N_TARGETS].reshape(-1, N_TARGETS, 3)
            alpha = x[:, 3 * N_TARGETS :]
            c = jnp.einsum("bj,bij->bi", u, z)
            d = jnp.arccos(jnp.clip(c, -1.0 + CLIP, 1.0 - CLIP))
            a = 0.5 * d * d + alpha
            f = -GAMMA * jax.nn.logsumexp(-a / GAMMA, axis=1)
            return jnp.mean(f)

        def step(params, state, x):
            m, v, t = state
            loss, grads = jax.value_and_grad(loss_fn)(params, x)
            t = t + 1.0
            bc1 = 1.0 - BETA1**t
            bc2 = 1.0 - BETA2**t
            m = jax.tree_util.tree_map(lambda m_, g: BETA1 * m_ + (1.0 - BETA1) * g, m, grads)
            v = jax.tree_util.tree_map(lambda v_, g: BETA2 * v_ + (1.0 - BETA2) * g * g, v, grads)
            # Same arithmetic as torch.optim.Adam (non-foreach path).
            params = jax.tree_util.tree_map(
                lambda p, m_, v_: p - (LR / bc1) * m_ / (jnp.sqrt(v_) / jnp.sqrt(bc2) + EPS),
                params,
                m,
                v,
            )
            return params, (m, v, t), loss

        self.step_fn = jax.jit(step, donate_argnums=(0, 1))
        self.version = jax.__version__

    def setup(self, params_np, x_np):
        jnp = self.jnp
        self.params = [(jnp.asarray(w), jnp.asarray(b)) for w, b in params_np]
        zeros = self.jax.tree_util.tree_map(jnp.zeros_like, self.params)
        self.state = (zeros, self.jax.tree_util.tree_map(jnp.zeros_like, self.params), jnp.float32(0.0))
        self.x = jnp.asarray(x_np)
        self.jax.block_until_ready((self.params, self.state, self.x))

    def step(self):
        self.params, self.state, loss = self.step_fn(self.params, self.state, self.x)
        self.jax.block_until_ready((self.params, self.state, loss))
        return loss

    def loss_value(self, loss):
        return float(loss)


# --------------------------------------------------------------------------- torch


class TorchStep:
    name = "torch"

    def __init__(self):
        import torch

        torch.set_num_threads(1)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # already set once in this process (only possible with --check)
        self.torch = torch
        self.version = torch.__version__

    def setup(self, params_np, x_np):
        torch = self.torch
        layers = []
        for i, (fan_in, fan_out) in enumerate(LAYERS):
            lin = torch.nn.Linear(fan_in, fan_out)
            with torch.no_grad():
                w, b = params_np[i]
                lin.weight.copy_(torch.from_numpy(w.T.copy()))
                lin.bias.copy_(torch.from_numpy(b.copy()))
            layers.append(lin)
            if i + 1 < len(LAYERS):
                layers.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*layers)
        self.opt = torch.optim.Adam(
            self.model.parameters(), lr=LR, betas=(BETA1, BETA2), eps=EPS, weight_decay=0.0
        )
        self.x = torch.from_numpy(x_np.copy())
        self.z = self.x[:, : 3 * N_TARGETS].reshape(-1, N_TARGETS, 3)
        self.alpha = self.x[:, 3 * N_TARGETS :]

    def loss_fn(self):
        torch = self.torch
        raw = self.model(self.x)
        u = raw / torch.linalg.vector_norm(raw, dim=1, keepdim=True)
        c = torch.einsum("bj,bij->bi", u, self.z)
        d = torch.arccos(torch.clamp(c, -1.0 + CLIP, 1.0 - CLIP))
        a = 0.5 * d * d + self.alpha
        f = -GAMMA * torch.logsumexp(-a / GAMMA, dim=1)
        return f.mean()

    def step(self):
        self.opt.zero_grad()
        loss = self.loss_fn()
        loss.backward()
        self.opt.step()
        return loss

    def loss_value(self, loss):
        return float(loss.detach())


FRAMEWORKS = {"jax": JaxStep, "torch": TorchStep}


def load(framework):
    """The framework's step object, or (None, reason) when it cannot be imported."""
    try:
        import numpy  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return None, f"numpy not importable: {type(exc).__name__}: {exc}"
    try:
        return FRAMEWORKS[framework](), None
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install (OSError, ...)
        return None, f"{framework} not importable: {type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- modes


def run_timing(framework, batches, repeats):
    runner, reason = load(framework)
    if runner is None:
        emit({"framework": framework, "skipped": reason})
        return 0
    import numpy as np

    params = init_params(np)
    for batch in batches:
        x = sample_batch(np, batch)
        runner.setup(params, x)
        for _ in range(WARMUP):
            runner.step()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            runner.step()
            times.append(time.perf_counter() - t0)
        emit(
            {
                "framework": framework,
                "batch": batch,
                "median_seconds": statistics.median(times),
                "repeats": repeats,
            }
        )
    return 0


def run_check(batch, steps, rtol):
    try:
        import numpy as np
    except ImportError as exc:
        emit({"check": "loss", "skipped": f"numpy not importable: {exc}"})
        return 0
    params = init_params(np)
    x = sample_batch(np, batch)
    reference = numpy_loss(np, params, x)
    losses = {}
    for name in FRAMEWORKS:
        runner, reason = load(name)
        if runner is None:
            emit({"check": "loss", "framework": name, "skipped": reason})
            continue
        runner.setup(params, x)
        losses[name] = [runner.loss_value(runner.step()) for _ in range(steps)]
        emit({"check": "loss", "framework": name, "version": runner.version, "batch": batch,
              "losses": losses[name]})
    ok = True
    for name, values in losses.items():
        rel = abs(values[0] - reference) / abs(reference)
        ok &= rel <= rtol
        emit({"check": "first_step_vs_numpy", "framework": name, "numpy_float64": reference,
              "value": values[0], "rel_diff": rel})
    if len(losses) == 2:
        a, b = losses["jax"], losses["torch"]
        rels = [abs(p - q) / abs(q) for p, q in zip(a, b)]
        ok &= max(rels) <= rtol
        emit({"check": "jax_vs_torch", "first_step": [a[0], b[0]], "rel_diff_per_step": rels})
    emit({"check": "result", "ok": ok, "rtol": rtol, "frameworks": sorted(losses)})
    return 0 if ok else 1


def parse_batches(text):
    batches = [int(part) for part in text.split(",") if part.strip()]
    if not batches or any(b <= 0 for b in batches):
        raise argparse.ArgumentTypeError(f"bad batch list: {text!r}")
    return batches


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--framework", choices=sorted(FRAMEWORKS))
    parser.add_argument("--batches", type=parse_batches, default=[8, 256, 4096])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--check", action="store_true",
                        help="compare first-step losses across numpy, jax and torch")
    parser.add_argument("--batch", type=int, default=256, help="batch size for --check")
    parser.add_argument("--steps", type=int, default=3, help="steps compared by --check")
    parser.add_argument("--rtol", type=float, default=1e-4, help="tolerance for --check")
    args = parser.parse_args(argv)
    if args.check:
        return run_check(args.batch, args.steps, args.rtol)
    if args.framework is None:
        parser.error("--framework is required (or pass --check)")
    if args.repeats <= 0:
        parser.error("--repeats must be positive")
    return run_timing(args.framework, args.batches, args.repeats)


if __name__ == "__main__":
    sys.exit(main())
