//! QP classes of OSQP's benchmark suite (Stellato et al. 2020, Appendix A), each with a size
//! parameter n: the problem distributions p(φ) that RLQP amortizes over (tutorial §6.4.5).

use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::{MpcFamily, QpProblem};
use crate::linalg::CsrMatrix;
use crate::{Error, Result};

/// A class of random QPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QpClass {
    /// n variables, m = 10n inequality rows: [`QpProblem::random`] at density 0.15.
    Random,
    /// min ½yᵀPy + qᵀy s.t. Ay = b: P = MMᵀ + 10⁻²I (M 15% dense), A (⌈n/2⌉×n, 15% dense),
    /// b = Ax₀ with x₀ ~ N(0, I).
    Equality,
    /// Factor-model portfolio: n assets x, k = ⌈n/10⌉ factors f, min xᵀDx + fᵀf − μᵀx s.t.
    /// f = Fᵀx, 1ᵀx = 1, 0 ≤ x ≤ 1, with F (n×k, 50% dense), Dᵢᵢ ~ U(0, √k), μ ~ N(0, I).
    Portfolio,
    /// Lasso as a QP: min ½rᵀr + λ1ᵀt s.t. r = Ax − b, −t ≤ x ≤ t, with A (n×n, 15% dense),
    /// b = Av + ε (v half zeros, else N(0, 1/n); ε ~ N(0, 10⁻⁴I)) and λ = ‖Aᵀb‖∞ / 5
    /// (OSQP's suite uses 100n rows; here n, to keep instances small).
    Lasso,
    /// Support vector machine: min xᵀx + λ1ᵀt s.t. t ≥ diag(b)Ax + 1, t ≥ 0, with m = 2n
    /// points (OSQP's suite: 100n), A 15% dense with N(±1/n, 1/n) entries for the two classes
    /// b = ±1, λ = 1.
    Svm,
    /// Huber fitting: min uᵀu + 2·1ᵀ(r + s) s.t. Ax − b = u + r − s, r ≥ 0, s ≥ 0, with m = 2n
    /// rows (OSQP's suite: 100n), A 15% dense N(0, 1), b = Av + ε, v ~ N(0, I/n), ε ~ N(0, ¼)
    /// with 5% outliers from U(0, 10).
    Huber,
    /// Model predictive control ([`super::MpcFamily`]): n states, ⌈n/2⌉ inputs, horizon 10, a
    /// random system and a random initial state per instance.
    Control,
}

impl QpClass {
    /// Every class, for tables.
    pub const ALL: [QpClass; 7] = [
        QpClass::Random,
        QpClass::Equality,
        QpClass::Portfolio,
        QpClass::Lasso,
        QpClass::Svm,
        QpClass::Huber,
        QpClass::Control,
    ];

    /// The class's name in configs and tables.
    pub fn name(self) -> &'static str {
        match self {
            QpClass::Random => "random",
            QpClass::Equality => "equality",
            QpClass::Portfolio => "portfolio",
            QpClass::Lasso => "lasso",
            QpClass::Svm => "svm",
            QpClass::Huber => "huber",
            QpClass::Control => "control",
        }
    }

    /// One instance of size parameter `n` ≥ 2.
    pub fn generate(self, n: usize, rng: &mut StdRng) -> Result<QpProblem> {
        if n < 2 {
            return Err(Error::invalid(format!(
                "QP class {}: the size n must be at least 2, got {n}",
                self.name()
            )));
        }
        match self {
            QpClass::Random => QpProblem::random(n, 10 * n, 0.15, rng),
            QpClass::Equality => equality(n, rng),
            QpClass::Portfolio => portfolio(n, rng),
            QpClass::Lasso => lasso(n, rng),
            QpClass::Svm => svm(n, rng),
            QpClass::Huber => huber(n, rng),
            QpClass::Control => {
                let family = MpcFamily::random(n, rng)?;
                let x0 = family.sample_initial_state(rng);
                family.instance(&x0)
            }
        }
    }
}

/// A parametric family of one class: the matrices P and A of one generated QP, fixed, and a
/// parameter of the class drawn afresh per instance (only q, l or u change, the setting of
/// OSQP's update mode and of amortized optimization's contexts):
///
/// | class | parameter |
/// |---|---|
/// | random | q ~ N(0, I) |
/// | equality | q ~ N(0, I) and b = Ax₀, x₀ ~ N(0, I) |
/// | portfolio | expected returns μ ~ N(0, I) |
/// | lasso | observations b = Av + ε (v and ε as in the class; λ stays the base QP's) |
/// | svm | the hinge weight λ ~ U(0.5, 2) |
/// | huber | observations b = Av + ε (as in the class) |
/// | control | the initial state x₀ ~ U(−1, 1) |
#[derive(Debug, Clone)]
pub struct QpFamily {
    class: QpClass,
    n: usize,
    base: QpProblem,
    mpc: Option<MpcFamily>,
}

impl QpClass {
    /// A parametric family of size parameter `n` ≥ 2 ([`QpFamily`]).
    pub fn family(self, n: usize, rng: &mut StdRng) -> Result<QpFamily> {
        let (base, mpc) = match self {
            QpClass::Control => {
                let family = MpcFamily::random(n, rng)?;
                let x0 = family.sample_initial_state(rng);
                (family.instance(&x0)?, Some(family))
            }
            _ => (self.generate(n, rng)?, None),
        };
        Ok(QpFamily {
            class: self,
            n,
            base,
            mpc,
        })
    }
}

impl QpFamily {
    /// The class.
    pub fn class(&self) -> QpClass {
        self.class
    }

    /// The QP the matrices come from (itself a member of the family).
    pub fn base(&self) -> &QpProblem {
        &self.base
    }

    /// A member with a fresh parameter: the same P and A, new q, l or u.
    pub fn instance(&self, rng: &mut StdRng) -> Result<QpProblem> {
        let base = &self.base;
        let (mut q, mut l, mut u) = (base.q().to_vec(), base.l().to_vec(), base.u().to_vec());
        let n = self.n;
        match self.class {
            QpClass::Random => q.iter_mut().for_each(|v| *v = normal(rng)),
            QpClass::Equality => {
                q.iter_mut().for_each(|v| *v = normal(rng));
                let x0: Vec<f64> = (0..n).map(|_| normal(rng)).collect();
                base.a().mul_vec(&x0, &mut l);
                u.copy_from_slice(&l);
            }
            QpClass::Portfolio => q[..n].iter_mut().for_each(|v| *v = -normal(rng)),
            QpClass::Lasso => {
                // Rows 0..n: Ax − r = b over the data columns 0..n.
                let v = lasso_code(n, rng);
                for r in 0..n {
                    let b = data_product(base.a(), r, &v) + 0.01 * normal(rng);
                    (l[r], u[r]) = (b, b);
                }
            }
            QpClass::Svm => {
                let lambda = rng.random_range(0.5..2.0);
                q[n..].iter_mut().for_each(|v| *v = lambda);
            }
            QpClass::Huber => {
                let v: Vec<f64> = (0..n).map(|_| normal(rng) / (n as f64).sqrt()).collect();
                for r in 0..2 * n {
                    let b = data_product(base.a(), r, &v) + huber_noise(rng);
                    (l[r], u[r]) = (b, b);
                }
            }
            QpClass::Control => {
                let mpc = self
                    .mpc
                    .as_ref()
                    .ok_or_else(|| Error::invalid("control family without its system (a bug)"))?;
                let x0 = mpc.sample_initial_state(rng);
                let qp = mpc.instance(&x0)?;
                return base.with_vectors(qp.q().to_vec(), qp.l().to_vec(), qp.u().to_vec());
            }
        }
        base.with_vectors(q, l, u)
    }
}

/// Row `r` of A over its first `v.len()` columns (the data block of the fitting classes)
/// times `v`.
fn data_product(a: &CsrMatrix, r: usize, v: &[f64]) -> f64 {
    a.row(r)
        .filter(|&(c, _)| c < v.len())
        .map(|(c, x)| x * v[c])
        .sum()
}

/// `count` distinct positions of a rows×cols matrix with N(0, 1) values.
fn sparse_triplets(
    rows: usize,
    cols: usize,
    density: f64,
    rng: &mut StdRng,
) -> Vec<(usize, usize, f64)> {
    let count = ((density * (rows * cols) as f64).round() as usize).clamp(1, rows * cols);
    sample(rng, rows * cols, count)
        .into_iter()
        .map(|k| (k / cols, k % cols, StandardNormal.sample(rng)))
        .collect()
}

fn normal(rng: &mut StdRng) -> f64 {
    StandardNormal.sample(rng)
}

/// The lasso class's true code v: half zeros, the rest N(0, 1/n).
fn lasso_code(n: usize, rng: &mut StdRng) -> Vec<f64> {
    (0..n)
        .map(|_| {
            if rng.random::<f64>() < 0.5 {
                0.0
            } else {
                normal(rng) / (n as f64).sqrt()
            }
        })
        .collect()
}

/// The Huber class's noise: N(0, ¼), or an outlier from U(0, 10) with probability 5%.
fn huber_noise(rng: &mut StdRng) -> f64 {
    if rng.random::<f64>() < 0.95 {
        0.5 * normal(rng)
    } else {
        rng.random_range(0.0..10.0)
    }
}

/// P = MMᵀ + 10⁻²I with M n×n at 15% density, dense row-major.
fn random_psd(n: usize, rng: &mut StdRng) -> Vec<f64> {
    let mut m = vec![0.0; n * n];
    for (r, c, v) in sparse_triplets(n, n, 0.15, rng) {
        m[r * n + c] = v;
    }
    let mut p = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            p[i * n + j] = (0..n).map(|k| m[i * n + k] * m[j * n + k]).sum::<f64>();
        }
        p[i * n + i] += 1e-2;
    }
    p
}

fn equality(n: usize, rng: &mut StdRng) -> Result<QpProblem> {
    let m = n.div_ceil(2);
    let p = random_psd(n, rng);
    let q = (0..n).map(|_| normal(rng)).collect();
    // Every row gets at least one entry, so that A has full row rank with high probability.
    let mut triplets = sparse_triplets(m, n, 0.15, rng);
    for r in 0..m {
        if !triplets.iter().any(|t| t.0 == r) {
            triplets.push((r, rng.random_range(0..n), normal(rng)));
        }
    }
    let a = CsrMatrix::from_triplets(m, n, &triplets)?;
    // b = A x₀ for a random x₀, so the constraints are consistent even if A is rank deficient.
    let x0: Vec<f64> = (0..n).map(|_| normal(rng)).collect();
    let mut b = vec![0.0; m];
    a.mul_vec(&x0, &mut b);
    QpProblem::new(CsrMatrix::from_dense(&p, n, n)?, q, a, b.clone(), b)
}

fn portfolio(n: usize, rng: &mut StdRng) -> Result<QpProblem> {
    let k = n.div_ceil(10);
    let vars = n + k;
    // xᵀDx as ½xᵀ(2D)x.
    let d: Vec<f64> = (0..n)
        .map(|_| 2.0 * rng.random_range(0.0..(k as f64).sqrt()))
        .collect();
    let p = diagonal(
        vars,
        d.into_iter().enumerate().chain((n..vars).map(|j| (j, 2.0))),
    )?;
    let mut q: Vec<f64> = (0..n).map(|_| -normal(rng)).collect();
    q.extend(std::iter::repeat_n(0.0, k));
    // Rows: k rows Fᵀx − f = 0, one row 1ᵀx = 1, n rows 0 ≤ x ≤ 1.
    let mut triplets = Vec::new();
    for (i, j, v) in sparse_triplets(n, k, 0.5, rng) {
        triplets.push((j, i, v));
    }
    for j in 0..k {
        triplets.push((j, n + j, -1.0));
    }
    for i in 0..n {
        triplets.push((k, i, 1.0));
        triplets.push((k + 1 + i, i, 1.0));
    }
    let rows = k + 1 + n;
    let a = CsrMatrix::from_triplets(rows, vars, &triplets)?;
    let mut l = vec![0.0; k];
    let mut u = vec![0.0; k];
    l.push(1.0);
    u.push(1.0);
    l.extend(std::iter::repeat_n(0.0, n));
    u.extend(std::iter::repeat_n(1.0, n));
    QpProblem::new(p, q, a, l, u)
}

fn lasso(n: usize, rng: &mut StdRng) -> Result<QpProblem> {
    let m = n;
    let data = sparse_triplets(m, n, 0.15, rng);
    let mut dense = vec![0.0; m * n];
    for &(r, c, v) in &data {
        dense[r * n + c] = v;
    }
    let v = lasso_code(n, rng);
    let b: Vec<f64> = (0..m)
        .map(|r| (0..n).map(|c| dense[r * n + c] * v[c]).sum::<f64>() + 0.01 * normal(rng))
        .collect();
    let lambda = (0..n)
        .map(|c| (0..m).map(|r| dense[r * n + c] * b[r]).sum::<f64>().abs())
        .fold(0.0, f64::max)
        / 5.0;
    // Variables (x n, r m, t n): P = diag(0, I, 0), q = (0, 0, λ1).
    let vars = 2 * n + m;
    let p = diagonal(vars, (n..n + m).map(|j| (j, 1.0)))?;
    let mut q = vec![0.0; n + m];
    q.extend(std::iter::repeat_n(lambda.max(1e-3), n));
    // Rows: m rows Ax − r = b; n rows x − t ≤ 0 (l = −∞); n rows x + t ≥ 0 (u = +∞).
    let mut triplets: Vec<(usize, usize, f64)> = data.clone();
    for j in 0..m {
        triplets.push((j, n + j, -1.0));
    }
    for i in 0..n {
        triplets.push((m + i, i, 1.0));
        triplets.push((m + i, n + m + i, -1.0));
        triplets.push((m + n + i, i, 1.0));
        triplets.push((m + n + i, n + m + i, 1.0));
    }
    let rows = m + 2 * n;
    let a = CsrMatrix::from_triplets(rows, vars, &triplets)?;
    let mut l = b.clone();
    let mut u = b;
    l.extend(std::iter::repeat_n(f64::NEG_INFINITY, n));
    u.extend(std::iter::repeat_n(0.0, n));
    l.extend(std::iter::repeat_n(0.0, n));
    u.extend(std::iter::repeat_n(f64::INFINITY, n));
    QpProblem::new(p, q, a, l, u)
}

fn svm(n: usize, rng: &mut StdRng) -> Result<QpProblem> {
    let m = 2 * n;
    let vars = n + m;
    let p = diagonal(vars, (0..n).map(|i| (i, 2.0)))?;
    let mut q = vec![0.0; n];
    q.extend(std::iter::repeat_n(1.0, m));
    let sd = 1.0 / (n as f64).sqrt();
    // Rows 0..m: t_i − b_i a_iᵀx ≥ 1; rows m..2m: t_i ≥ 0.
    let mut triplets = Vec::new();
    for (r, c, z) in sparse_triplets(m, n, 0.15, rng) {
        let label = if r < m / 2 { 1.0 } else { -1.0 };
        let a = label / n as f64 + sd * z;
        triplets.push((r, c, -label * a));
    }
    for i in 0..m {
        triplets.push((i, n + i, 1.0));
        triplets.push((m + i, n + i, 1.0));
    }
    let a = CsrMatrix::from_triplets(2 * m, vars, &triplets)?;
    let mut l = vec![1.0; m];
    l.extend(std::iter::repeat_n(0.0, m));
    let u = vec![f64::INFINITY; 2 * m];
    QpProblem::new(p, q, a, l, u)
}

fn huber(n: usize, rng: &mut StdRng) -> Result<QpProblem> {
    let m = 2 * n;
    let data = sparse_triplets(m, n, 0.15, rng);
    let mut dense = vec![0.0; m * n];
    for &(r, c, v) in &data {
        dense[r * n + c] = v;
    }
    let v: Vec<f64> = (0..n).map(|_| normal(rng) / (n as f64).sqrt()).collect();
    let b: Vec<f64> = (0..m)
        .map(|r| {
            let noise = huber_noise(rng);
            (0..n).map(|c| dense[r * n + c] * v[c]).sum::<f64>() + noise
        })
        .collect();
    // Variables (x n, u m, r m, s m).
    let vars = n + 3 * m;
    let p = diagonal(vars, (n..n + m).map(|j| (j, 2.0)))?;
    let mut q = vec![0.0; n + m];
    q.extend(std::iter::repeat_n(2.0, 2 * m));
    // Rows 0..m: Ax − u − r + s = b; rows m..2m: r ≥ 0; rows 2m..3m: s ≥ 0.
    let mut triplets: Vec<(usize, usize, f64)> = data;
    for j in 0..m {
        triplets.push((j, n + j, -1.0));
        triplets.push((j, n + m + j, -1.0));
        triplets.push((j, n + 2 * m + j, 1.0));
        triplets.push((m + j, n + m + j, 1.0));
        triplets.push((2 * m + j, n + 2 * m + j, 1.0));
    }
    let a = CsrMatrix::from_triplets(3 * m, vars, &triplets)?;
    let mut l = b.clone();
    let mut u = b;
    l.extend(std::iter::repeat_n(0.0, 2 * m));
    u.extend(std::iter::repeat_n(f64::INFINITY, 2 * m));
    QpProblem::new(p, q, a, l, u)
}

/// A diagonal vars×vars matrix with the given (index, value) entries, the rest zero: the P of
/// the portfolio and data-fitting classes, built sparse (a dense P of the Huber class at
/// n = 200 would hold 1,400² entries).
fn diagonal(vars: usize, entries: impl Iterator<Item = (usize, f64)>) -> Result<CsrMatrix> {
    let triplets: Vec<(usize, usize, f64)> = entries.map(|(i, v)| (i, i, v)).collect();
    CsrMatrix::from_triplets(vars, vars, &triplets)
}
