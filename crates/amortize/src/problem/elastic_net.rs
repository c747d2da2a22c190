//! The ISTA map of elastic-net regression as a fixed-point family (tutorial §6.4; the ENR
//! setting of neural fixed-point acceleration, Venkataraman & Amos 2021).
//!
//! For a context x = (A, b, t) with A ∈ R^{m×n}, b ∈ Rᵐ and the step t = 1/L,
//! L = ‖A‖₂² + λ₂, the elastic net
//!
//! min_y ½‖Ay − b‖² + λ₁‖y‖₁ + ½λ₂‖y‖²
//!
//! is solved by the fixed point of the proximal-gradient (ISTA) map
//!
//! g(y; x) = S_{tλ₁}(y − t(Aᵀ(Ay − b) + λ₂y)),  S_τ(v) = sign(v) max(|v| − τ, 0).
//!
//! Every instance has its own sparse A (N(0, 1) entries at the given density) and b ~ N(0, I),
//! so the family covers many conditionings: plain iteration contracts at rate 1 − tλ₂ at worst.

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::fixed_point::{
    fixed_point_residual, normalised_residual, solve_fixed_point, FixedPointMap,
};
use super::Problem;
use crate::linalg::spectral_norm_squared;
use crate::{Error, Result};

/// Settings of [`ElasticNetIsta`]; the defaults are the ENR setting (m = n = 25, density 0.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ElasticNetConfig {
    /// Rows m of A (default 25).
    pub rows: usize,
    /// Columns n of A, the solution dimension (default 25).
    pub cols: usize,
    /// Fraction of non-zero entries of A (default 0.1).
    pub density: f64,
    /// ℓ1 weight λ₁ ≥ 0 (default 0.1).
    pub l1: f64,
    /// ℓ2 weight λ₂ > 0 (default 0.05), which makes the problem strongly convex.
    pub l2: f64,
}

impl Default for ElasticNetConfig {
    fn default() -> Self {
        ElasticNetConfig {
            rows: 25,
            cols: 25,
            density: 0.1,
            l1: 0.1,
            l2: 0.05,
        }
    }
}

/// The elastic-net ISTA fixed-point family; see the module documentation. Contexts are rows
/// `[vec(A) (row-major), b, t]` of length m·n + m + 1.
#[derive(Debug, Clone)]
pub struct ElasticNetIsta {
    config: ElasticNetConfig,
}

impl ElasticNetIsta {
    /// Validates the configuration.
    pub fn new(config: ElasticNetConfig) -> Result<Self> {
        let c = &config;
        if c.rows == 0 || c.cols == 0 {
            return Err(Error::invalid(
                "elastic-net-ista: rows and cols must be >= 1",
            ));
        }
        if !(c.density > 0.0 && c.density <= 1.0) {
            return Err(Error::invalid(format!(
                "elastic-net-ista: density must be in (0, 1], got {}",
                c.density
            )));
        }
        if !(c.l1.is_finite() && c.l1 >= 0.0 && c.l2.is_finite() && c.l2 > 0.0) {
            return Err(Error::invalid(format!(
                "elastic-net-ista: need l1 >= 0 and l2 > 0 (finite), got l1 = {}, l2 = {}",
                c.l1, c.l2
            )));
        }
        Ok(ElasticNetIsta { config })
    }

    /// The settings.
    pub fn config(&self) -> &ElasticNetConfig {
        &self.config
    }

    /// Builds contexts from instances: each `(A row-major m·n, b m)`; t = 1/(‖A‖₂² + λ₂).
    pub fn contexts(&self, instances: &[(Vec<f64>, Vec<f64>)], device: &Device) -> Result<Tensor> {
        let (m, n) = (self.config.rows, self.config.cols);
        let mut data = Vec::with_capacity(instances.len() * self.context_dim());
        for (i, (a, b)) in instances.iter().enumerate() {
            if a.len() != m * n || b.len() != m {
                return Err(Error::invalid(format!(
                    "elastic-net-ista: instance {i} has |A| = {} and |b| = {}, expected {} and {m}",
                    a.len(),
                    b.len(),
                    m * n
                )));
            }
            if !a.iter().chain(b).all(|v| v.is_finite()) {
                return Err(Error::invalid(format!(
                    "elastic-net-ista: instance {i} contains NaN or infinite values"
                )));
            }
            let lipschitz = spectral_norm_squared(a, m, n, 1e-9, 2_000) + self.config.l2;
            data.extend_from_slice(a);
            data.extend_from_slice(b);
            data.push(1.0 / lipschitz);
        }
        Ok(
            Tensor::from_vec(data, (instances.len(), self.context_dim()), device)?
                .to_dtype(DType::F32)?,
        )
    }

    /// (A `(N, m, n)`, b `(N, m, 1)`, t `(N, 1)`) from contexts, in `dtype`.
    fn unpack(&self, x: &Tensor, dtype: DType) -> Result<(Tensor, Tensor, Tensor)> {
        let (m, n) = (self.config.rows, self.config.cols);
        let rows = x.dim(0)?;
        let x = x.to_dtype(dtype)?;
        let a = x.narrow(1, 0, m * n)?.reshape((rows, m, n))?;
        let b = x.narrow(1, m * n, m)?.reshape((rows, m, 1))?;
        let t = x.narrow(1, m * n + m, 1)?;
        Ok((a, b, t))
    }
}

impl ElasticNetIsta {
    /// The proximal-gradient step with per-coordinate steps D `(rows, n)`, or the family's
    /// global step t when `steps` is `None`: S_{λ₁D}(y − D(Aᵀ(Ay − b) + λ₂y)).
    fn proximal_step(&self, y: &Tensor, x: &Tensor, steps: Option<&Tensor>) -> Result<Tensor> {
        let (a, b, t) = self.unpack(x, y.dtype())?;
        let (rows, n) = y.dims2()?;
        let residual = a.matmul(&y.reshape((rows, n, 1))?)?.sub(&b)?;
        let grad = a
            .transpose(1, 2)?
            .matmul(&residual)?
            .reshape((rows, n))?
            .add(&y.affine(self.config.l2, 0.0)?)?;
        let step = match steps {
            Some(s) => s.broadcast_mul(&t)?,
            None => t,
        };
        let v = y.sub(&grad.broadcast_mul(&step)?)?;
        let tau = step.affine(self.config.l1, 0.0)?;
        let pos = v.broadcast_sub(&tau)?.relu()?;
        let neg = v.neg()?.broadcast_sub(&tau)?.relu()?;
        Ok(pos.sub(&neg)?)
    }
}

impl FixedPointMap for ElasticNetIsta {
    fn apply(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        self.proximal_step(y, x, None)
    }

    fn supports_coordinate_steps(&self) -> bool {
        true
    }

    /// S_{λ₁D}(y − D(Aᵀ(Ay − b) + λ₂y)) with D = t·diag(steps); steps = 1/(t·Hᵢᵢ) is the
    /// Jacobi-preconditioned ISTA map.
    fn apply_with_steps(&self, y: &Tensor, x: &Tensor, steps: &Tensor) -> Result<Tensor> {
        if steps.dims() != y.dims() {
            return Err(Error::invalid(format!(
                "elastic-net-ista: per-coordinate steps of shape {:?} for iterates of shape {:?}",
                steps.dims(),
                y.dims()
            )));
        }
        self.proximal_step(y, x, Some(&steps.to_dtype(y.dtype())?))
    }

    fn coordinate_context_dim(&self) -> usize {
        2
    }

    /// For coordinate i, with H = AᵀA + λ₂I the Hessian of the smooth part:
    /// log₁₀(t·Hᵢᵢ)/2, how far the global step t = 1/L falls short of the coordinate's own
    /// Newton step 1/Hᵢᵢ (0 when they agree; a column with few entries is slow), and
    /// Hᵢᵢ/Σⱼ|Hᵢⱼ| ∈ (0, 1], how weakly it is coupled to the others (1: that Newton step is
    /// exact).
    fn coordinate_context(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let (a, _, t) = self.unpack(x, x.dtype())?;
        let l2 = self.config.l2;
        let gram = a.transpose(1, 2)?.contiguous()?.matmul(&a)?;
        let diagonal = a.sqr()?.sum(1)?.affine(1.0, l2)?;
        let coupling = gram.abs()?.sum(2)?.affine(1.0, l2)?;
        let shortfall = diagonal
            .broadcast_mul(&t)?
            .log()?
            .affine(0.5 / std::f64::consts::LN_10, 0.0)?;
        let dominance = diagonal.div(&coupling)?;
        Ok(Some(Tensor::stack(&[shortfall, dominance], 2)?))
    }
}

impl Problem for ElasticNetIsta {
    fn name(&self) -> &str {
        "elastic-net-ista"
    }

    fn context_dim(&self) -> usize {
        self.config.rows * self.config.cols + self.config.rows + 1
    }

    fn solution_dim(&self) -> usize {
        self.config.cols
    }

    fn sample_contexts(&self, n: usize, rng: &mut StdRng, device: &Device) -> Result<Tensor> {
        let (rows, cols) = (self.config.rows, self.config.cols);
        let instances: Vec<(Vec<f64>, Vec<f64>)> = (0..n)
            .map(|_| {
                let a = (0..rows * cols)
                    .map(|_| {
                        let keep = rng.random::<f64>() < self.config.density;
                        let v: f64 = StandardNormal.sample(rng);
                        if keep {
                            v
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let b = (0..rows).map(|_| StandardNormal.sample(rng)).collect();
                (a, b)
            })
            .collect();
        self.contexts(&instances, device)
    }

    /// The normalised residual ‖g(y) − y‖ / ‖g(0) − 0‖ (module [`super::fixed_point`]).
    fn objective(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        normalised_residual(self, y, x)
    }

    fn solve_exact(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.check_contexts(x)?;
        let zero = Tensor::zeros((x.dim(0)?, self.solution_dim()), DType::F64, x.device())?;
        Ok(Some(solve_fixed_point(self, &zero, x, 1e-10)?))
    }

    /// The fixed-point residual ‖g(y) − y‖ (unnormalised).
    fn residual(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        fixed_point_residual(self, y, x)
    }

    fn fixed_point_map(&self) -> Option<&dyn FixedPointMap> {
        Some(self)
    }

    /// Also checks that every step t is positive.
    fn check_contexts(&self, x: &Tensor) -> Result<()> {
        super::check_matrix(x, self.context_dim(), "elastic-net-ista contexts")?;
        let t: Vec<f64> = x
            .narrow(1, self.context_dim() - 1, 1)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1()?;
        if let Some(i) = t.iter().position(|t| *t <= 0.0) {
            return Err(Error::invalid(format!(
                "elastic-net-ista contexts row {i}: the step t (last column) must be > 0, got {}",
                t[i]
            )));
        }
        Ok(())
    }
}
