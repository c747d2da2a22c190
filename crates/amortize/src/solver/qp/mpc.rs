//! Model predictive control as a parametric QP (OSQP's "control" benchmark class; tutorial
//! §6.5 on control): a fixed linear system and cost, and an initial state x₀ that changes from
//! one instance to the next. The family {QP(x₀)} is the natural amortization setting: the
//! matrices never change, only the bounds of the initial-state rows do, so a model can learn
//! x₀ ↦ (y*, λ*) and warm-start ADMM ([`crate::train::QpWarmStart`]).
//!
//! With states x_t ∈ R^{n_x}, inputs u_t ∈ R^{n_u} and horizon T,
//!
//! min Σ_{t<T} (x_tᵀQx_t + u_tᵀRu_t) + x_TᵀQ_T x_T
//! s.t. x₀ = x̂₀, x_{t+1} = A x_t + B u_t, |x_t| ≤ x̄ (t ≥ 1), |u_t| ≤ ū,
//!
//! over y = (x₀, …, x_T, u₀, …, u_{T−1}); the objective is written ½yᵀPy with P = 2·blkdiag.

use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use super::QpProblem;
use crate::linalg::CsrMatrix;
use crate::{Error, Result};

/// Horizon of the generated systems (OSQP's suite uses 10).
pub const MPC_HORIZON: usize = 10;

/// A linear system with its cost and bounds; [`MpcFamily::instance`] gives the QP of one
/// initial state.
#[derive(Debug, Clone, PartialEq)]
pub struct MpcFamily {
    /// Dynamics A (n_x × n_x, row-major).
    a: Vec<f64>,
    /// Input matrix B (n_x × n_u, row-major).
    b: Vec<f64>,
    /// diag(Q) (also the terminal Q_T).
    q: Vec<f64>,
    /// diag(R).
    r: Vec<f64>,
    nx: usize,
    nu: usize,
    horizon: usize,
    /// State bound x̄ (t ≥ 1).
    x_bar: f64,
    /// Input bound ū.
    u_bar: f64,
    /// Initial states are drawn from U(−x0_scale, x0_scale)^{n_x}.
    x0_scale: f64,
}

impl MpcFamily {
    /// A random system with n_x = `n` states, n_u = ⌈n/2⌉ inputs and horizon 10, after OSQP's
    /// suite: A = I + N(0, 0.1²/n_x) entries, B with N(0, 1/n_x) entries, Q diagonal with 70% of
    /// its entries from U(0, 10) (the rest 0), R = 0.1·I, x̄ = 5, ū = 1, x₀ ~ U(−1, 1).
    pub fn random(n: usize, rng: &mut StdRng) -> Result<Self> {
        if n < 2 {
            return Err(Error::invalid(format!(
                "MPC: the number of states must be at least 2, got {n}"
            )));
        }
        let (nx, nu) = (n, n.div_ceil(2));
        let sd = 1.0 / (nx as f64).sqrt();
        let mut normal = |scale: f64| -> f64 {
            let z: f64 = StandardNormal.sample(rng);
            scale * z
        };
        let mut a: Vec<f64> = (0..nx * nx).map(|_| normal(0.1 * sd)).collect();
        for i in 0..nx {
            a[i * nx + i] += 1.0;
        }
        let b = (0..nx * nu).map(|_| normal(sd)).collect();
        let q = (0..nx)
            .map(|_| {
                if rng.random::<f64>() < 0.7 {
                    10.0 * rng.random::<f64>()
                } else {
                    0.0
                }
            })
            .collect();
        Ok(MpcFamily {
            a,
            b,
            q,
            r: vec![0.1; nu],
            nx,
            nu,
            horizon: MPC_HORIZON,
            x_bar: 5.0,
            u_bar: 1.0,
            x0_scale: 1.0,
        })
    }

    /// Number of states n_x (the dimension of the context x₀).
    pub fn states(&self) -> usize {
        self.nx
    }

    /// Variables (T+1)·n_x + T·n_u of every instance.
    pub fn variables(&self) -> usize {
        (self.horizon + 1) * self.nx + self.horizon * self.nu
    }

    /// Constraint rows (T+1)·n_x (initial state, dynamics) + T·n_x + T·n_u (bounds).
    pub fn constraints(&self) -> usize {
        (2 * self.horizon + 1) * self.nx + self.horizon * self.nu
    }

    /// Draws an initial state x₀ ~ U(−1, 1)^{n_x}.
    pub fn sample_initial_state(&self, rng: &mut StdRng) -> Vec<f64> {
        (0..self.nx)
            .map(|_| rng.random_range(-self.x0_scale..self.x0_scale))
            .collect()
    }

    /// The QP for initial state `x0`.
    pub fn instance(&self, x0: &[f64]) -> Result<QpProblem> {
        let (nx, nu, t_max) = (self.nx, self.nu, self.horizon);
        if x0.len() != nx {
            return Err(Error::invalid(format!(
                "MPC: the initial state has {} entries, the system has {nx} states",
                x0.len()
            )));
        }
        if !x0.iter().all(|v| v.is_finite()) {
            return Err(Error::invalid(
                "MPC: the initial state contains NaN or infinite values",
            ));
        }
        let vars = self.variables();
        let x_index = |t: usize, i: usize| t * nx + i;
        let u_index = |t: usize, j: usize| (t_max + 1) * nx + t * nu + j;
        let mut p_triplets = Vec::with_capacity(vars);
        for t in 0..=t_max {
            for i in 0..nx {
                p_triplets.push((x_index(t, i), x_index(t, i), 2.0 * self.q[i]));
            }
        }
        for t in 0..t_max {
            for j in 0..nu {
                p_triplets.push((u_index(t, j), u_index(t, j), 2.0 * self.r[j]));
            }
        }
        let mut rows = Vec::new();
        let (mut l, mut u) = (Vec::new(), Vec::new());
        // x₀ = x̂₀.
        for (i, &v) in x0.iter().enumerate() {
            rows.push((l.len(), x_index(0, i), 1.0));
            l.push(v);
            u.push(v);
        }
        // A x_t + B u_t − x_{t+1} = 0.
        for t in 0..t_max {
            for i in 0..nx {
                let row = l.len();
                for k in 0..nx {
                    rows.push((row, x_index(t, k), self.a[i * nx + k]));
                }
                for j in 0..nu {
                    rows.push((row, u_index(t, j), self.b[i * nu + j]));
                }
                rows.push((row, x_index(t + 1, i), -1.0));
                l.push(0.0);
                u.push(0.0);
            }
        }
        // Bounds on x_1…x_T and u_0…u_{T−1}.
        for t in 1..=t_max {
            for i in 0..nx {
                rows.push((l.len(), x_index(t, i), 1.0));
                l.push(-self.x_bar);
                u.push(self.x_bar);
            }
        }
        for t in 0..t_max {
            for j in 0..nu {
                rows.push((l.len(), u_index(t, j), 1.0));
                l.push(-self.u_bar);
                u.push(self.u_bar);
            }
        }
        let p = CsrMatrix::from_triplets(vars, vars, &p_triplets)?;
        let a = CsrMatrix::from_triplets(l.len(), vars, &rows)?;
        QpProblem::new(p, vec![0.0; vars], a, l, u)
    }
}
