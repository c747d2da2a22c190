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
//!
//! **Per-constraint steps.** ADMM's preconditioner is its step: with one ρᵢ per constraint,
//! R = diag(ρ), the iteration reads K = P + σI + AᵀRA, ρz − λ → Rz − λ, λ/ρ → R⁻¹λ and
//! ρ(·) → R(·), and its fixed points are the QP's primal–dual solutions for every positive ρ
//! (OSQP's own per-constraint ρ, 10³ times larger on equality rows, is one such choice; RLQP
//! learns another, §6.4.5). [`FixedPointMap::apply_with_steps`] takes ρᵢ = ρ·dᵢ from the
//! multipliers d of the z-coordinates and refactors K outside the graph: the map stays
//! differentiable in the state, not in d, so a learned preconditioner of it is trained by ES
//! (`train.gradient = hybrid`).

use std::ops::Range;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, TensorId};
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
    factors: FactorCache,
}

/// The per-constraint step ρ and K⁻¹ of the last (contexts, multipliers) pair seen by
/// [`FixedPointMap::apply_with_steps`]: an unrolled run passes the same two tensors at every
/// iteration, so K is refactored once per run rather than once per iteration. Reused only for
/// the same two tensors (by id) holding the same steps; contexts are taken as immutable.
#[derive(Default)]
struct FactorCache(Mutex<Option<Factors>>);

struct Factors {
    key: (TensorId, TensorId, DType),
    /// ρ per row, as read from the multipliers.
    rho_values: Vec<Vec<f64>>,
    rho: Tensor,
    kinv: Tensor,
}

impl Clone for FactorCache {
    fn clone(&self) -> Self {
        FactorCache::default()
    }
}

impl std::fmt::Debug for FactorCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FactorCache")
    }
}

/// ADMM's step: the family's scalar ρ, or one per constraint `(rows, m)`.
enum Rho<'a> {
    Scalar(f64),
    PerConstraint(&'a Tensor),
}

impl Rho<'_> {
    /// ρ∘t.
    fn times(&self, t: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Rho::Scalar(rho) => t.affine(*rho, 0.0)?,
            Rho::PerConstraint(rho) => t.mul(rho)?,
        })
    }

    /// t/ρ.
    fn divide(&self, t: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Rho::Scalar(rho) => t.affine(1.0 / rho, 0.0)?,
            Rho::PerConstraint(rho) => t.div(rho)?,
        })
    }
}

/// Where each block of a context row lies ([`QpAdmm::context_of`]).
struct ContextLayout {
    kinv: Range<usize>,
    p: Range<usize>,
    a: Range<usize>,
    q: Range<usize>,
    l: Range<usize>,
    u: Range<usize>,
}

/// The block `range` of the context rows `x`, `(rows, range.len())`.
fn block(x: &Tensor, range: &Range<usize>) -> Result<Tensor> {
    Ok(x.narrow(1, range.start, range.len())?)
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
            factors: FactorCache::default(),
        })
    }

    /// (variables n, constraints m) of every instance.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.m)
    }

    /// The blocks of a context row, in the order of [`QpAdmm::context_of`].
    fn layout(&self) -> ContextLayout {
        let (n, m) = (self.n, self.m);
        let mut end = 0;
        let mut next = |len: usize| {
            end += len;
            end - len..end
        };
        ContextLayout {
            kinv: next(n * n),
            p: next(n * n),
            a: next(m * n),
            q: next(n),
            l: next(m),
            u: next(m),
        }
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
        let kinv = Cholesky::factor(&k, n)
            .ok_or_else(|| Error::invalid("qp-admm: the KKT matrix is not positive definite"))?
            .inverse();
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

impl QpAdmm {
    /// One ADMM iteration (module documentation) from states `s` with K⁻¹ `(rows, n, n)` and
    /// step `rho`.
    fn admm_step(&self, s: &Tensor, x: &Tensor, kinv: &Tensor, rho: Rho) -> Result<Tensor> {
        let (n, m) = (self.n, self.m);
        let rows = s.dim(0)?;
        let (sigma, alpha) = (self.config.sigma, self.config.alpha);
        let layout = self.layout();
        let a = block(x, &layout.a)?.reshape((rows, m, n))?;
        let q = block(x, &layout.q)?;
        let l = block(x, &layout.l)?;
        let u = block(x, &layout.u)?;
        let y = s.narrow(1, 0, n)?;
        let z = s.narrow(1, n, m)?;
        let lam = s.narrow(1, n + m, m)?;
        let w = rho.times(&z)?.sub(&lam)?;
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
        let z_next = relaxed.add(&rho.divide(&lam)?)?.maximum(&l)?.minimum(&u)?;
        let lam_next = lam.add(&rho.times(&relaxed.sub(&z_next)?)?)?;
        Ok(Tensor::cat(&[y_next, z_next, lam_next], 1)?)
    }

    /// ρᵢ = ρ·dᵢ from the multipliers of the z-coordinates, `(rows, m)`, and
    /// K⁻¹ = (P + σI + Aᵀdiag(ρ)A)⁻¹ per row, `(rows, n, n)`, in `dtype`; both constants of the
    /// graph. Reuses the last pair when called again with the same two tensors.
    fn per_constraint_factors(
        &self,
        x: &Tensor,
        steps: &Tensor,
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        let (n, m, sigma) = (self.n, self.m, self.config.sigma);
        let rows = x.dim(0)?;
        let rho: Vec<Vec<f64>> = steps
            .narrow(1, n, m)?
            .detach()
            .to_dtype(DType::F64)?
            .affine(self.config.rho, 0.0)?
            .to_vec2()?;
        let key = (x.id(), steps.id(), dtype);
        let mut cache = self
            .factors
            .0
            .lock()
            .map_err(|_| Error::invalid("qp-admm: the factor cache was poisoned"))?;
        // The step values are compared too: a variable's tensor keeps its id when set in place.
        if let Some(f) = cache
            .as_ref()
            .filter(|f| f.key == key && f.rho_values == rho)
        {
            return Ok((f.rho.clone(), f.kinv.clone()));
        }
        let contexts: Vec<Vec<f64>> = x.detach().to_dtype(DType::F64)?.to_vec2()?;
        let layout = self.layout();
        let mut kinv = Vec::with_capacity(rows * n * n);
        for (i, (row, rho)) in contexts.iter().zip(&rho).enumerate() {
            if let Some(bad) = rho.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
                return Err(Error::invalid(format!(
                    "qp-admm: instance {i} got the step rho = {bad}; per-constraint steps must be positive and finite"
                )));
            }
            let mut k = row[layout.p.clone()].to_vec();
            let a = &row[layout.a.clone()];
            for r in 0..n {
                k[r * n + r] += sigma;
            }
            for (c, weight) in rho.iter().enumerate() {
                let ac = &a[c * n..(c + 1) * n];
                for r in 0..n {
                    for j in 0..n {
                        k[r * n + j] += weight * ac[r] * ac[j];
                    }
                }
            }
            let chol = Cholesky::factor(&k, n).ok_or_else(|| {
                Error::invalid(format!(
                    "qp-admm: instance {i}'s KKT matrix is not positive definite"
                ))
            })?;
            kinv.extend(chol.inverse());
        }
        let device = x.device();
        let rho_values = rho;
        let rho = Tensor::from_vec(rho_values.concat(), (rows, m), device)?.to_dtype(dtype)?;
        let kinv = Tensor::from_vec(kinv, (rows, n, n), device)?.to_dtype(dtype)?;
        *cache = Some(Factors {
            key,
            rho_values,
            rho: rho.clone(),
            kinv: kinv.clone(),
        });
        Ok((rho, kinv))
    }
}

/// Descriptors per constraint in [`FixedPointMap::coordinate_context`].
const CONSTRAINT_FEATURES: usize = 4;

impl FixedPointMap for QpAdmm {
    fn apply(&self, s: &Tensor, x: &Tensor) -> Result<Tensor> {
        let n = self.n;
        let rows = s.dim(0)?;
        let x = x.to_dtype(s.dtype())?;
        let kinv = block(&x, &self.layout().kinv)?.reshape((rows, n, n))?;
        self.admm_step(s, &x, &kinv, Rho::Scalar(self.config.rho))
    }

    fn supports_coordinate_steps(&self) -> bool {
        true
    }

    fn coordinate_steps_differentiable(&self) -> bool {
        false
    }

    /// The ADMM iteration with ρᵢ = ρ·steps_{n+i} for constraint i (the z-coordinates'
    /// multipliers; those of y and λ are not read): same fixed points for any positive steps,
    /// and g itself at steps = 1 (up to the rounding of refactoring K). Not differentiable in
    /// `steps`.
    fn apply_with_steps(&self, s: &Tensor, x: &Tensor, steps: &Tensor) -> Result<Tensor> {
        if steps.dims() != s.dims() {
            return Err(Error::invalid(format!(
                "qp-admm: per-coordinate steps of shape {:?} for states of shape {:?}",
                steps.dims(),
                s.dims()
            )));
        }
        let (rho, kinv) = self.per_constraint_factors(x, steps, s.dtype())?;
        let x = x.to_dtype(s.dtype())?;
        self.admm_step(s, &x, &kinv, Rho::PerConstraint(&rho))
    }

    fn coordinate_context_dim(&self) -> usize {
        CONSTRAINT_FEATURES
    }

    /// For the z- and λ-coordinates of constraint i: log₁₀‖aᵢ‖/2 (‖aᵢ‖ floored at 10⁻³, an
    /// empty row), log₁₀(tr P / tr AᵀA)/4 (the instance's scale, the same for every
    /// constraint; √ of the ratio is the ρ that balances P against ρAᵀA), whether the row is
    /// an equality (uᵢ − lᵢ ≤ 10⁻⁹) and log₁₀(uᵢ − lᵢ)/6 (the width clamped to [10⁻⁶, 10⁶]).
    /// Zeros for the y-coordinates.
    fn coordinate_context(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let (n, m) = (self.n, self.m);
        let rows = x.dim(0)?;
        let ln10 = std::f64::consts::LN_10;
        let layout = self.layout();
        let a = block(x, &layout.a)?.reshape((rows, m, n))?;
        let a2 = a.sqr()?;
        let row_norm = a2
            .sum(2)?
            .sqrt()?
            .clamp(1e-3, f64::INFINITY)?
            .log()?
            .affine(0.5 / ln10, 0.0)?;
        let eye = Tensor::eye(n, x.dtype(), x.device())?.reshape((1, n * n))?;
        let trace_p = block(x, &layout.p)?.broadcast_mul(&eye)?.sum(1)?;
        let trace_ata = a2.reshape((rows, m * n))?.sum(1)?;
        let scale = trace_p
            .clamp(1e-12, f64::INFINITY)?
            .div(&trace_ata.clamp(1e-12, f64::INFINITY)?)?
            .log()?
            .affine(0.25 / ln10, 0.0)?
            .reshape((rows, 1))?
            .broadcast_as((rows, m))?
            .contiguous()?;
        let width = block(x, &layout.u)?.sub(&block(x, &layout.l)?)?;
        let equality = width.le(1e-9)?.to_dtype(x.dtype())?;
        let log_width = width
            .clamp(1e-6, 1e6)?
            .log()?
            .affine(1.0 / (6.0 * ln10), 0.0)?;
        let constraints = Tensor::stack(&[row_norm, scale, equality, log_width], 2)?;
        let primal = Tensor::zeros((rows, n, CONSTRAINT_FEATURES), x.dtype(), x.device())?;
        Ok(Some(Tensor::cat(
            &[primal, constraints.clone(), constraints],
            1,
        )?))
    }
}

impl Problem for QpAdmm {
    fn name(&self) -> &str {
        "qp-admm"
    }

    fn context_dim(&self) -> usize {
        self.layout().u.end
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
        let layout = self.layout();
        let mut out = Vec::with_capacity(rows.len() * self.solution_dim());
        for (i, row) in rows.iter().enumerate() {
            let p0 = &row[layout.p.clone()];
            let p: Vec<f64> = (0..n * n)
                .map(|k| 0.5 * (p0[k] + p0[(k % n) * n + k / n]))
                .collect();
            let a = &row[layout.a.clone()];
            let q = row[layout.q.clone()].to_vec();
            let l = row[layout.l.clone()].to_vec();
            let u = row[layout.u.clone()].to_vec();
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
