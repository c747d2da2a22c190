//! Sparse coding (tutorial §6.2, eq. 36): E(y; x) = ½‖x − W y‖² + α‖y‖₁ over codes y ∈ Rⁿ for
//! signals x ∈ Rᵐ and a fixed dictionary W.

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::{LeastSquares, Problem};
use crate::solver::{solve, ProxOperator, ProximalGradient, Settings, Status};
use crate::{Error, Result};

/// The settings of [`Lasso`]; the defaults are the optimisation benchmark of the solver
/// issue (W 64×256 with unit-norm columns, α = 0.1, 10%-dense codes, noise 0.01).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LassoConfig {
    /// Signal dimension m (default 64).
    pub signal_dim: usize,
    /// Code dimension n (default 256).
    pub code_dim: usize,
    /// ℓ1 weight α > 0 (default 0.1).
    pub alpha: f64,
    /// Fraction of non-zero entries of the generating codes (default 0.1).
    pub density: f64,
    /// Standard deviation of the additive signal noise (default 0.01).
    pub noise: f64,
    /// Seed of the dictionary W: N(0, 1) entries, columns scaled to unit norm (default 0).
    pub dictionary_seed: u64,
    /// When set, signal noise at this signal-to-noise ratio in dB replaces `noise`.
    pub snr_db: Option<f64>,
}

impl Default for LassoConfig {
    fn default() -> Self {
        LassoConfig {
            signal_dim: 64,
            code_dim: 256,
            alpha: 0.1,
            density: 0.1,
            noise: 0.01,
            dictionary_seed: 0,
            snr_db: None,
        }
    }
}

impl LassoConfig {
    /// The standard LISTA sparse-recovery benchmark (Chen et al. 2018): W 256×512 with unit-norm
    /// Gaussian columns, Bernoulli(0.1)·N(0, 1) codes, noiseless signals (set `snr_db` to
    /// `Some(20.0)` for the noisy variant); α = 0.1 for the Lasso view.
    pub fn sparse_recovery() -> Self {
        LassoConfig {
            signal_dim: 256,
            code_dim: 512,
            noise: 0.0,
            ..LassoConfig::default()
        }
    }
}

/// # The Lasso family
/// f(y; x) = ½‖x − Wy‖² + α‖y‖₁ (eq. 36). Contexts are signals x = W y_true + noise with
/// Bernoulli(density)·N(0, 1) codes y_true.
///
/// - gradient: the subgradient Wᵀ(Wy − x) + α·sign(y) (what autodiff of the objective gives);
/// - exact solver: FISTA with restart in f64 until the gradient mapping is below 1e-10;
/// - residual: the gradient-mapping norm L‖y − soft(y − ∇g(y)/L, α/L)‖ with g the smooth
///   part and L = σ_max(W)², zero exactly at minimisers (a subgradient norm never vanishes
///   at a sparse solution).
#[derive(Debug, Clone)]
pub struct Lasso {
    config: LassoConfig,
    smooth: LeastSquares,
    lipschitz: f64,
}

impl Lasso {
    /// Builds the family, drawing its dictionary.
    pub fn new(config: LassoConfig) -> Result<Self> {
        let c = &config;
        if c.signal_dim == 0 || c.code_dim == 0 {
            return Err(Error::invalid(
                "lasso: signal_dim and code_dim must be >= 1",
            ));
        }
        if !(c.alpha.is_finite() && c.alpha > 0.0) {
            return Err(Error::invalid(format!(
                "lasso: alpha must be finite and > 0, got {}",
                c.alpha
            )));
        }
        let mut smooth =
            LeastSquares::lasso_benchmark(c.signal_dim, c.code_dim, c.dictionary_seed)?
                .with_sampler(c.density, c.noise)?;
        if let Some(db) = c.snr_db {
            smooth = smooth.with_snr_db(db)?;
        }
        let lipschitz = smooth.lipschitz()?;
        Ok(Lasso {
            config,
            smooth,
            lipschitz,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LassoConfig {
        &self.config
    }

    /// The smooth part ½‖x − Wy‖² (with the dictionary and the signal sampler).
    pub fn least_squares(&self) -> &LeastSquares {
        &self.smooth
    }

    /// The dictionary W (m×n, f64).
    pub fn dictionary(&self) -> &Tensor {
        self.smooth.dictionary()
    }

    /// α.
    pub fn alpha(&self) -> f64 {
        self.config.alpha
    }

    /// L = σ_max(W)², the Lipschitz constant of the smooth part's gradient.
    pub fn lipschitz(&self) -> f64 {
        self.lipschitz
    }

    /// The ℓ1 prox operator of this family.
    pub fn prox(&self) -> ProxOperator {
        ProxOperator::L1 {
            alpha: self.config.alpha,
        }
    }

    /// `count` signals and their generating codes, `(count, m)` and `(count, n)` f32.
    pub fn sample_with_codes(
        &self,
        count: usize,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        self.smooth.sample_with_codes(count, rng, device)
    }
}

impl Problem for Lasso {
    fn name(&self) -> &str {
        "lasso"
    }

    fn context_dim(&self) -> usize {
        self.config.signal_dim
    }

    fn solution_dim(&self) -> usize {
        self.config.code_dim
    }

    fn sample_contexts(&self, n: usize, rng: &mut StdRng, device: &Device) -> Result<Tensor> {
        self.smooth.sample_contexts(n, rng, device)
    }

    fn objective(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        let l1 = y.abs()?.sum(1)?.affine(self.config.alpha, 0.0)?;
        Ok(self.smooth.objective(y, x)?.add(&l1)?)
    }

    fn gradient(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        let sign = y.sign()?.affine(self.config.alpha, 0.0)?;
        Ok(self.smooth.gradient(y, x)?.add(&sign)?)
    }

    fn domain_gradient(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        self.gradient(y, x)
    }

    fn solve_exact(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.check_contexts(x)?;
        let x64 = x.to_dtype(DType::F64)?;
        let y0 = Tensor::zeros((x.dim(0)?, self.config.code_dim), DType::F64, x.device())?;
        let fista = ProximalGradient::fista(&self.smooth, self.prox(), 1.0 / self.lipschitz)?;
        let settings = Settings {
            tol: 1e-10,
            max_iters: 50_000,
            max_time: None,
        };
        let s = solve(&fista, &y0, &x64, &settings, |_, _| {})?;
        if s.status == Status::NumericalError {
            return Err(Error::invalid("lasso: FISTA hit a non-finite value"));
        }
        Ok(Some(s.y.to_dtype(x.dtype())?))
    }

    fn as_lasso(&self) -> Option<&Lasso> {
        Some(self)
    }

    fn sample_with_solutions(
        &self,
        n: usize,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Option<(Tensor, Tensor)>> {
        Ok(Some(self.sample_with_codes(n, rng, device)?))
    }

    fn residual(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        let step = 1.0 / self.lipschitz;
        let g = self.smooth.gradient(y, x)?;
        let mapped = self.prox().prox(&(y - (g * step)?)?, step)?;
        Ok(y.sub(&mapped)?
            .affine(self.lipschitz, 0.0)?
            .sqr()?
            .sum(1)?
            .sqrt()?)
    }
}
