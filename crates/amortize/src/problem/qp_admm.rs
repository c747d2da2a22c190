//! The ADMM (OSQP) iteration on convex QPs as a fixed-point family (tutorial §6.4, eq. 58–59).
//!
//! For a QP min ½yᵀPy + qᵀy s.t. l ≤ Ay ≤ u with a fixed step ρ, σ and over-relaxation α, the
//! state s = (y, z, λ) ∈ R^{n+2m} is mapped by one ADMM iteration
//!
//! ỹ = K⁻¹(σy − q + Aᵀ(ρz − λ)), K = P + σI + ρAᵀA,  z̃ = Aỹ,
//! y⁺ = αỹ + (1 − α)y,  z⁺ = Π_[l,u](αz̃ + (1 − α)z + λ/ρ),  λ⁺ = λ + ρ(αz̃ + (1 − α)z − z⁺),
//!
//! whose fixed points are the QP's primal–dual solutions. The context of an instance holds K⁻¹
//! (precomputed once per QP), A, q, l and u, so the map is a few batched matrix products: the
//! form NeuralFP and HyperAA unroll. Instances are drawn from an OSQP benchmark class
//! ([`QpClass`]) without scaling, with infinite bounds clipped to ±10⁶.

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::fixed_point::{fixed_point_residual, normalised_residual, FixedPointMap};
use super::Problem;
use crate::linalg::Cholesky;
use crate::solver::qp::{Admm, AdmmSettings, QpClass, QpProblem, QpStatus};
use crate::{Error, Result};

/// Bounds beyond this are clipped for the tensor map.
const BOUND_CLIP: f64 = 1e6;

/// Settings of [`QpAdmm`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QpAdmmConfig {
    /// The QP class (default random, m = 10n).
    pub class: QpClass,
    /// Its size n (default 10).
    pub size: usize,
    /// The fixed step ρ (default 0.1, OSQP's initial one).
    pub rho: f64,
    /// σ (default 1e-6).
    pub sigma: f64,
    /// Over-relaxation α ∈ (0, 2) (default 1.6).
    pub alpha: f64,
}

impl Default for QpAdmmConfig {
    fn default() -> Self {
        QpAdmmConfig {
            class: QpClass::Random,
            size: 10,
            rho: 0.1,
            sigma: 1e-6,
            alpha: 1.6,
        }
    }
}

/// The ADMM fixed-point family; see the module documentation.
#[derive(Debug, Clone)]
pub struct QpAdmm {
    config: QpAdmmConfig,
    n: usize,
    m: usize,
}

impl QpAdmm {
    /// Validates the configuration and finds the class's dimensions at this size.
    pub fn new(config: QpAdmmConfig) -> Result<Self> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !(positive(config.rho)
            && positive(config.sigma)
            && config.alpha > 0.0
            && config.alpha < 2.0)
        {
            return Err(Error::invalid(
                "qp-admm: need rho > 0, sigma > 0 and alpha in (0, 2)",
            ));
        }
        let probe = config
            .class
            .generate(config.size, &mut rand::SeedableRng::seed_from_u64(0))?;
        Ok(QpAdmm {
            n: probe.n(),
            m: probe.m(),
            config,
        })
    }

    /// (variables n, constraints m) of every instance.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.m)
    }

    /// The context row of one QP: [K⁻¹ (n²), P (n²), A (m·n), q (n), l (m), u (m)]; P is kept so
    /// that the exact solver can rebuild the QP.
    pub fn context_of(&self, qp: &QpProblem) -> Result<Vec<f64>> {
        let (n, m) = (self.n, self.m);
        if qp.n() != n || qp.m() != m {
            return Err(Error::invalid(format!(
                "qp-admm: the QP has {} variables and {} constraints, the family {n} and {m}",
                qp.n(),
                qp.m()
            )));
        }
        let a = qp.a().to_dense();
        let mut k = qp.p().to_dense();
        for i in 0..n {
            k[i * n + i] += self.config.sigma;
            for j in 0..n {
                k[i * n + j] +=
                    self.config.rho * (0..m).map(|r| a[r * n + i] * a[r * n + j]).sum::<f64>();
            }
        }
        let chol = Cholesky::factor(&k, n)
            .ok_or_else(|| Error::invalid("qp-admm: the KKT matrix is not positive definite"))?;
        let mut kinv = vec![0.0; n * n];
        for c in 0..n {
            let mut e = vec![0.0; n];
            e[c] = 1.0;
            chol.solve_in_place(&mut e);
            for r in 0..n {
                kinv[r * n + c] = e[r];
            }
        }
        let clip = |v: &f64| v.clamp(-BOUND_CLIP, BOUND_CLIP);
        let mut row = kinv;
        row.extend(qp.p().to_dense());
        row.extend_from_slice(&a);
        row.extend_from_slice(qp.q());
        row.extend(qp.l().iter().map(clip));
        row.extend(qp.u().iter().map(clip));
        Ok(row)
    }

    /// The primal part y of states `(N, n + 2m)`.
    pub fn primal(&self, s: &Tensor) -> Result<Tensor> {
        Ok(s.narrow(1, 0, self.n)?)
    }
}

impl FixedPointMap for QpAdmm {
    fn apply(&self, s: &Tensor, x: &Tensor) -> Result<Tensor> {
        let (n, m) = (self.n, self.m);
        let rows = s.dim(0)?;
        let x = x.to_dtype(s.dtype())?;
        let (rho, sigma, alpha) = (self.config.rho, self.config.sigma, self.config.alpha);
        let kinv = x.narrow(1, 0, n * n)?.reshape((rows, n, n))?;
        let a = x.narrow(1, 2 * n * n, m * n)?.reshape((rows, m, n))?;
        let mut at = 2 * n * n + m * n;
        let q = x.narrow(1, at, n)?;
        at += n;
        let l = x.narrow(1, at, m)?;
        let u = x.narrow(1, at + m, m)?;
        let y = s.narrow(1, 0, n)?;
        let z = s.narrow(1, n, m)?;
        let lam = s.narrow(1, n + m, m)?;
        let w = z.affine(rho, 0.0)?.sub(&lam)?;
        let atw = a
            .transpose(1, 2)?
            .matmul(&w.reshape((rows, m, 1))?)?
            .reshape((rows, n))?;
        let rhs = y.affine(sigma, 0.0)?.sub(&q)?.add(&atw)?;
        let y_tilde = kinv.matmul(&rhs.reshape((rows, n, 1))?)?;
        let z_tilde = a.matmul(&y_tilde)?.reshape((rows, m))?;
        let y_tilde = y_tilde.reshape((rows, n))?;
        let y_next = y_tilde
            .affine(alpha, 0.0)?
            .add(&y.affine(1.0 - alpha, 0.0)?)?;
        let relaxed = z_tilde
            .affine(alpha, 0.0)?
            .add(&z.affine(1.0 - alpha, 0.0)?)?;
        let z_next = relaxed
            .add(&lam.affine(1.0 / rho, 0.0)?)?
            .maximum(&l)?
            .minimum(&u)?;
        let lam_next = lam.add(&relaxed.sub(&z_next)?.affine(rho, 0.0)?)?;
        Ok(Tensor::cat(&[y_next, z_next, lam_next], 1)?)
    }
}

impl Problem for QpAdmm {
    fn name(&self) -> &str {
        "qp-admm"
    }

    fn context_dim(&self) -> usize {
        2 * self.n * self.n + self.m * self.n + self.n + 2 * self.m
    }

    fn solution_dim(&self) -> usize {
        self.n + 2 * self.m
    }

    fn sample_contexts(&self, count: usize, rng: &mut StdRng, device: &Device) -> Result<Tensor> {
        let mut data = Vec::with_capacity(count * self.context_dim());
        for _ in 0..count {
            let qp = self.config.class.generate(self.config.size, rng)?;
            data.extend(self.context_of(&qp)?);
        }
        Ok(Tensor::from_vec(data, (count, self.context_dim()), device)?.to_dtype(DType::F32)?)
    }

    /// The normalised residual of the ADMM map.
    fn objective(&self, s: &Tensor, x: &Tensor) -> Result<Tensor> {
        normalised_residual(self, s, x)
    }

    /// Rebuilds each QP from its context and solves it with ADMM (OSQP's algorithm, with
    /// scaling and adaptive ρ) to 1e-9; the fixed point is (y*, Π_[l,u](Ay*), λ*).
    fn solve_exact(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.check_contexts(x)?;
        let (n, m) = (self.n, self.m);
        let rows: Vec<Vec<f64>> = x.to_dtype(DType::F64)?.to_vec2()?;
        let admm = Admm::new(AdmmSettings::accurate(1e-9))?;
        let mut out = Vec::with_capacity(rows.len() * self.solution_dim());
        for (i, row) in rows.iter().enumerate() {
            let p0 = &row[n * n..2 * n * n];
            let p: Vec<f64> = (0..n * n)
                .map(|k| 0.5 * (p0[k] + p0[(k % n) * n + k / n]))
                .collect();
            let mut at = 2 * n * n;
            let a = &row[at..at + m * n];
            at += m * n;
            let q = row[at..at + n].to_vec();
            at += n;
            let l = row[at..at + m].to_vec();
            let u = row[at + m..at + 2 * m].to_vec();
            let qp = QpProblem::from_dense(&p, q, a, l.clone(), u.clone())?;
            let sol = admm.solve(&qp, None)?;
            if sol.status != QpStatus::Solved {
                return Err(Error::invalid(format!(
                    "qp-admm: instance {i} was not solved ({:?})",
                    sol.status
                )));
            }
            let mut ay = vec![0.0; m];
            qp.a().mul_vec(&sol.y, &mut ay);
            out.extend_from_slice(&sol.y);
            out.extend((0..m).map(|r| ay[r].clamp(l[r], u[r])));
            out.extend_from_slice(&sol.lambda);
        }
        Ok(Some(Tensor::from_vec(
            out,
            (rows.len(), self.solution_dim()),
            x.device(),
        )?))
    }

    /// ‖g(s) − s‖.
    fn residual(&self, s: &Tensor, x: &Tensor) -> Result<Tensor> {
        fixed_point_residual(self, s, x)
    }

    fn fixed_point_map(&self) -> Option<&dyn FixedPointMap> {
        Some(self)
    }
}
