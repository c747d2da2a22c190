//! Strongly convex quadratics with a closed-form solution, for tests and sanity checks.
//!
//! f(y; x) = ½ yᵀ Q y − (B x)ᵀ y with Q = I + MMᵀ/n (symmetric positive definite, fixed by the
//! seed) and B fixed by the seed; x ~ N(0, I). Then ∇_y f = Q y − B x and y*(x) = Q⁻¹ B x.

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::Problem;
use crate::{Error, Result};

/// Settings of the [`Quadratic`] family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuadraticConfig {
    /// Context dimension (default 4).
    pub context_dim: usize,
    /// Solution dimension (default 3).
    pub solution_dim: usize,
    /// Seed of Q and B (default 0).
    pub seed: u64,
}

impl Default for QuadraticConfig {
    fn default() -> Self {
        QuadraticConfig {
            context_dim: 4,
            solution_dim: 3,
            seed: 0,
        }
    }
}

/// The quadratic family; see the module documentation.
#[derive(Debug, Clone)]
pub struct Quadratic {
    config: QuadraticConfig,
    /// Q, row-major (solution_dim²).
    q: Vec<f64>,
    /// B, row-major (solution_dim × context_dim).
    b: Vec<f64>,
    /// Q⁻¹B, row-major (solution_dim × context_dim).
    q_inv_b: Vec<f64>,
}

impl Quadratic {
    /// Draws Q and B from the seed.
    pub fn new(config: QuadraticConfig) -> Result<Self> {
        let (n, k) = (config.solution_dim, config.context_dim);
        if n == 0 || k == 0 {
            return Err(Error::invalid("quadratic: dimensions must be at least 1"));
        }
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut draw = |len: usize| -> Vec<f64> {
            (0..len).map(|_| StandardNormal.sample(&mut rng)).collect()
        };
        let m = draw(n * n);
        let b = draw(n * k);
        let mut q = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                let dot: f64 = (0..n).map(|l| m[i * n + l] * m[j * n + l]).sum();
                q[i * n + j] = dot / n as f64 + if i == j { 1.0 } else { 0.0 };
            }
        }
        let l = cholesky(&q, n);
        let mut q_inv_b = vec![0.0; n * k];
        for col in 0..k {
            let rhs: Vec<f64> = (0..n).map(|i| b[i * k + col]).collect();
            let sol = cholesky_solve(&l, n, &rhs);
            for i in 0..n {
                q_inv_b[i * k + col] = sol[i];
            }
        }
        Ok(Quadratic {
            config,
            q,
            b,
            q_inv_b,
        })
    }

    fn matrix(&self, data: &[f64], rows: usize, cols: usize, like: &Tensor) -> Result<Tensor> {
        Ok(Tensor::from_slice(data, (rows, cols), like.device())?.to_dtype(like.dtype())?)
    }
}

/// The lower Cholesky factor of an SPD matrix (row-major, n×n).
fn cholesky(a: &[f64], n: usize) -> Vec<f64> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            if i == j {
                l[i * n + i] = (a[i * n + i] - s).sqrt();
            } else {
                l[i * n + j] = (a[i * n + j] - s) / l[j * n + j];
            }
        }
    }
    l
}

/// Solves L Lᵀ z = rhs.
fn cholesky_solve(l: &[f64], n: usize, rhs: &[f64]) -> Vec<f64> {
    let mut w = vec![0.0; n];
    for i in 0..n {
        let s: f64 = (0..i).map(|k| l[i * n + k] * w[k]).sum();
        w[i] = (rhs[i] - s) / l[i * n + i];
    }
    let mut z = vec![0.0; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| l[k * n + i] * z[k]).sum();
        z[i] = (w[i] - s) / l[i * n + i];
    }
    z
}

impl Problem for Quadratic {
    fn name(&self) -> &str {
        "quadratic"
    }

    fn context_dim(&self) -> usize {
        self.config.context_dim
    }

    fn solution_dim(&self) -> usize {
        self.config.solution_dim
    }

    fn sample_contexts(&self, n: usize, rng: &mut StdRng, device: &Device) -> Result<Tensor> {
        let k = self.config.context_dim;
        let data: Vec<f64> = (0..n * k).map(|_| StandardNormal.sample(rng)).collect();
        Ok(Tensor::from_vec(data, (n, k), device)?.to_dtype(DType::F32)?)
    }

    fn objective(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        let (n, k) = (self.config.solution_dim, self.config.context_dim);
        let q = self.matrix(&self.q, n, n, y)?;
        let b = self.matrix(&self.b, n, k, y)?;
        let quad = y.matmul(&q)?.mul(y)?.sum(1)?.affine(0.5, 0.0)?;
        let lin = x.matmul(&b.t()?)?.mul(y)?.sum(1)?;
        Ok(quad.sub(&lin)?)
    }

    /// Closed form: ∇_y f = Q y − B x (Q is symmetric).
    fn gradient(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        let (n, k) = (self.config.solution_dim, self.config.context_dim);
        let q = self.matrix(&self.q, n, n, y)?;
        let b = self.matrix(&self.b, n, k, y)?;
        Ok(y.matmul(&q)?.sub(&x.matmul(&b.t()?)?)?)
    }

    /// The domain is all of Rⁿ (π_Y is the identity), so this is [`Problem::gradient`].
    fn domain_gradient(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        self.gradient(y, x)
    }

    fn solve_exact(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.check_contexts(x)?;
        let (n, k) = (self.config.solution_dim, self.config.context_dim);
        let qib = self.matrix(&self.q_inv_b, n, k, x)?;
        Ok(Some(x.matmul(&qib.t()?)?))
    }
}
