//! Convex quadratic programs in OSQP form (tutorial eq. 57),
//!
//! min ½ yᵀPy + qᵀy  subject to  l ≤ Ay ≤ u,   P ⪰ 0,
//!
//! their data checks, OSQP's random-QP generator, and the ADMM solver of eq. 58–59.

mod admm;
mod classes;
mod kkt;
mod ldl;
mod mpc;
mod ordering;
mod scaling;

pub use admm::{
    Admm, AdmmSettings, AdmmWorkspace, KktForm, KktOrdering, QpSolution, QpStatus, RhoPolicy,
    RowKind, RHO_FEATURES,
};
pub use classes::{QpClass, QpFamily};
pub use mpc::{MpcFamily, MPC_HORIZON};

use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::linalg::CsrMatrix;
use crate::{Error, Result};

/// Bounds at or beyond ±1e30 are infinite (OSQP's convention); ±∞ is accepted too.
pub const QP_INFINITY: f64 = 1e30;

/// Bounds not NaN and l ≤ u.
fn check_bounds(l: &[f64], u: &[f64]) -> Result<()> {
    if l.iter().chain(u).any(|v| v.is_nan()) {
        return Err(Error::invalid("QP: the bounds l or u contain NaN"));
    }
    if let Some(i) = (0..l.len()).find(|&i| l[i] > u[i]) {
        return Err(Error::invalid(format!(
            "QP: lower bound l[{i}] = {} exceeds upper bound u[{i}] = {}",
            l[i], u[i]
        )));
    }
    Ok(())
}

/// ±∞ for a bound at or beyond ±[`QP_INFINITY`].
fn clip_infinity(v: f64) -> f64 {
    if v >= QP_INFINITY {
        f64::INFINITY
    } else if v <= -QP_INFINITY {
        f64::NEG_INFINITY
    } else {
        v
    }
}

/// One QP instance: P (n×n, symmetric, both triangles stored), q (n), A (m×n), l, u (m).
#[derive(Debug, Clone, PartialEq)]
pub struct QpProblem {
    p: CsrMatrix,
    q: Vec<f64>,
    a: CsrMatrix,
    l: Vec<f64>,
    u: Vec<f64>,
}

impl QpProblem {
    /// Checks and stores a QP: dimensions agree, P, q, A are finite, bounds are not NaN,
    /// l ≤ u, P is symmetric and positive semidefinite (P + 10⁻⁹·max(1, max Pᵢᵢ)·I has a
    /// Cholesky factor). Bounds beyond ±1e30 become ±∞.
    pub fn new(p: CsrMatrix, q: Vec<f64>, a: CsrMatrix, l: Vec<f64>, u: Vec<f64>) -> Result<Self> {
        let n = q.len();
        let m = l.len();
        if p.rows() != n || p.cols() != n {
            return Err(Error::invalid(format!(
                "QP: P is {}×{} but q has length {n}",
                p.rows(),
                p.cols()
            )));
        }
        if a.cols() != n || a.rows() != m || u.len() != m {
            return Err(Error::invalid(format!(
                "QP: A is {}×{}, l has length {m} and u {}; expected A to be {m}×{n}",
                a.rows(),
                a.cols(),
                u.len()
            )));
        }
        if !p.values().iter().chain(&q).all(|v| v.is_finite()) {
            return Err(Error::invalid("QP: P or q contains NaN or infinite values"));
        }
        if !a.values().iter().all(|v| v.is_finite()) {
            return Err(Error::invalid("QP: A contains NaN or infinite values"));
        }
        check_bounds(&l, &u)?;
        let entry = |i: usize, j: usize| p.get(i, j);
        let scale = (0..n).fold(1.0f64, |s, i| s.max(entry(i, i).abs()));
        for i in 0..n {
            for (j, v) in p.row(i) {
                if j < i && (v - entry(j, i)).abs() > 1e-9 * scale {
                    return Err(Error::invalid(format!(
                        "QP: P is not symmetric (P[{i}][{j}] = {v} but P[{j}][{i}] = {})",
                        entry(j, i)
                    )));
                }
                if j > i && entry(j, i) == 0.0 && v.abs() > 1e-9 * scale {
                    return Err(Error::invalid(format!(
                        "QP: P is not symmetric (P[{i}][{j}] = {v} but P[{j}][{i}] = 0)"
                    )));
                }
            }
        }
        if !kkt::shifted_is_positive_definite(&p, 1e-9 * scale) {
            return Err(Error::invalid(
                "QP: P is not positive semidefinite (the problem is not convex)",
            ));
        }
        Ok(QpProblem {
            p,
            q,
            a,
            l: l.into_iter().map(clip_infinity).collect(),
            u: u.into_iter().map(clip_infinity).collect(),
        })
    }

    /// From dense row-major P (n×n) and A (m×n).
    pub fn from_dense(p: &[f64], q: Vec<f64>, a: &[f64], l: Vec<f64>, u: Vec<f64>) -> Result<Self> {
        let (n, m) = (q.len(), l.len());
        Self::new(
            CsrMatrix::from_dense(p, n, n)?,
            q,
            CsrMatrix::from_dense(a, m, n)?,
            l,
            u,
        )
    }

    /// OSQP's "random QP" benchmark class (Stellato et al. 2020, Appendix): M with
    /// round(0.15·n²) N(0, 1) entries at random positions, P = MMᵀ + 10⁻²I, q ~ N(0, I),
    /// A (m×n) with round(density·mn) N(0, 1) entries, l = −U(0, 1)ᵐ, u = U(0, 1)ᵐ.
    pub fn random(n: usize, m: usize, density: f64, rng: &mut StdRng) -> Result<Self> {
        if n == 0 || !(density > 0.0 && density <= 1.0) {
            return Err(Error::invalid(format!(
                "random QP needs n >= 1 and density in (0, 1], got n = {n}, density = {density}"
            )));
        }
        let sparse = |rows: usize, cols: usize, rng: &mut StdRng| {
            let count = ((density * (rows * cols) as f64).round() as usize).min(rows * cols);
            let triplets: Vec<_> = sample(rng, rows * cols, count)
                .into_iter()
                .map(|k| (k / cols, k % cols, StandardNormal.sample(rng)))
                .collect();
            CsrMatrix::from_triplets(rows, cols, &triplets)
        };
        let mf = sparse(n, n, rng)?.to_dense();
        let mut p = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                p[i * n + j] = (0..n).map(|k| mf[i * n + k] * mf[j * n + k]).sum::<f64>();
            }
            p[i * n + i] += 1e-2;
        }
        let a = sparse(m, n, rng)?;
        let q = (0..n).map(|_| StandardNormal.sample(rng)).collect();
        let u: Vec<f64> = (0..m).map(|_| rng.random::<f64>()).collect();
        let l = (0..m).map(|_| -rng.random::<f64>()).collect();
        Self::new(CsrMatrix::from_dense(&p, n, n)?, q, a, l, u)
    }

    /// The QP with the same P and A and new vectors q, l, u: one member of a parametric
    /// family (OSQP's update of the linear cost and bounds). The vectors get the checks of
    /// [`QpProblem::new`]; the matrices, already checked, are shared by value.
    pub fn with_vectors(&self, q: Vec<f64>, l: Vec<f64>, u: Vec<f64>) -> Result<Self> {
        let (n, m) = (self.n(), self.m());
        if q.len() != n || l.len() != m || u.len() != m {
            return Err(Error::invalid(format!(
                "QP update: q has length {}, l {} and u {}; the QP has {n} variables and {m} \
                 constraints",
                q.len(),
                l.len(),
                u.len()
            )));
        }
        if !q.iter().all(|v| v.is_finite()) {
            return Err(Error::invalid("QP: q contains NaN or infinite values"));
        }
        check_bounds(&l, &u)?;
        Ok(QpProblem {
            p: self.p.clone(),
            q,
            a: self.a.clone(),
            l: l.into_iter().map(clip_infinity).collect(),
            u: u.into_iter().map(clip_infinity).collect(),
        })
    }

    /// Number of variables n.
    pub fn n(&self) -> usize {
        self.q.len()
    }

    /// Number of constraints m.
    pub fn m(&self) -> usize {
        self.l.len()
    }

    /// P.
    pub fn p(&self) -> &CsrMatrix {
        &self.p
    }

    /// q.
    pub fn q(&self) -> &[f64] {
        &self.q
    }

    /// A.
    pub fn a(&self) -> &CsrMatrix {
        &self.a
    }

    /// Lower bounds l (−∞ allowed).
    pub fn l(&self) -> &[f64] {
        &self.l
    }

    /// Upper bounds u (+∞ allowed).
    pub fn u(&self) -> &[f64] {
        &self.u
    }

    /// ½ yᵀPy + qᵀy.
    pub fn objective(&self, y: &[f64]) -> f64 {
        let mut py = vec![0.0; self.n()];
        self.p.mul_vec(y, &mut py);
        y.iter()
            .zip(&py)
            .zip(&self.q)
            .map(|((yi, pi), qi)| 0.5 * yi * pi + qi * yi)
            .sum()
    }

    /// ‖Ay − Π_[l,u](Ay)‖∞, the constraint violation of y.
    pub fn primal_residual(&self, y: &[f64]) -> f64 {
        let mut ay = vec![0.0; self.m()];
        self.a.mul_vec(y, &mut ay);
        (0..self.m()).fold(0.0, |r, i| {
            r.max((ay[i] - ay[i].clamp(self.l[i], self.u[i])).abs())
        })
    }

    /// ‖Py + q + Aᵀλ‖∞, the stationarity residual of a primal-dual pair.
    pub fn dual_residual(&self, y: &[f64], lambda: &[f64]) -> f64 {
        let n = self.n();
        let (mut py, mut atl) = (vec![0.0; n], vec![0.0; n]);
        self.p.mul_vec(y, &mut py);
        self.a.mul_transpose_vec(lambda, &mut atl);
        (0..n).fold(0.0, |r, i| r.max((py[i] + self.q[i] + atl[i]).abs()))
    }
}

/// A QP as JSON: dense `P` (n×n) and `A` (m×n) as arrays of rows, `q`, `l`, `u`; a `null`
/// bound is infinite (−∞ in `l`, +∞ in `u`), as is any bound beyond ±1e30.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QpData {
    /// P, row by row.
    #[serde(rename = "P")]
    pub p: Vec<Vec<f64>>,
    /// q.
    pub q: Vec<f64>,
    /// A, row by row.
    #[serde(rename = "A")]
    pub a: Vec<Vec<f64>>,
    /// Lower bounds (`null` = −∞).
    pub l: Vec<Option<f64>>,
    /// Upper bounds (`null` = +∞).
    pub u: Vec<Option<f64>>,
}

impl QpData {
    /// Checks the shapes and builds the [`QpProblem`].
    pub fn to_problem(&self) -> Result<QpProblem> {
        let n = self.q.len();
        let flatten = |rows: &[Vec<f64>], name: &str, cols: usize| -> Result<Vec<f64>> {
            if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != cols) {
                return Err(Error::invalid(format!(
                    "QP: row {i} of {name} has {} entries, expected {cols}",
                    r.len()
                )));
            }
            Ok(rows.concat())
        };
        if self.p.len() != n {
            return Err(Error::invalid(format!(
                "QP: P has {} rows but q has length {n}",
                self.p.len()
            )));
        }
        let p = flatten(&self.p, "P", n)?;
        let a = flatten(&self.a, "A", n)?;
        let l = self
            .l
            .iter()
            .map(|v| v.unwrap_or(f64::NEG_INFINITY))
            .collect();
        let u = self.u.iter().map(|v| v.unwrap_or(f64::INFINITY)).collect();
        if self.a.len() != self.l.len() {
            return Err(Error::invalid(format!(
                "QP: A has {} rows but l has length {}",
                self.a.len(),
                self.l.len()
            )));
        }
        QpProblem::from_dense(&p, self.q.clone(), &a, l, u)
    }
}
