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
    /// Where signals come from (default planted codes).
    pub signals: Signals,
    /// Rounds of dictionary learning for `signals = "digits"` (default 10).
    pub dictionary_iterations: usize,
}

/// The source of the Lasso's signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Signals {
    /// x = W y_true + noise with planted Bernoulli–Gaussian codes (default).
    #[default]
    Planted,
    /// The 1,797 8×8 images of the digits set (`data/digits.csv`), each centred and scaled to
    /// unit norm, with a dictionary learned from the first 80% of them by alternating FISTA
    /// codes and least squares; training draws from those, evaluation from the last 20%
    /// (`signal_dim` must be 64; there are no planted codes).
    Digits,
}

/// `n` rows of `pool` drawn uniformly (with replacement) from `range`, as f32.
fn draw_rows(
    pool: &Tensor,
    range: std::ops::Range<usize>,
    n: usize,
    rng: &mut StdRng,
    device: &Device,
) -> Result<Tensor> {
    use rand::Rng;
    let idx: Vec<u32> = (0..n)
        .map(|_| rng.random_range(range.clone()) as u32)
        .collect();
    let idx = Tensor::from_vec(idx, n, &Device::Cpu)?;
    Ok(pool
        .index_select(&idx, 0)?
        .to_dtype(DType::F32)?
        .to_device(device)?)
}

/// The digits images, compiled in (see `data/README.md`).
const DIGITS_CSV: &str = include_str!("../../../../data/digits.csv");

/// The digits images as unit-norm, zero-mean rows `(1797, 64)` f64.
fn digits() -> Result<Tensor> {
    let mut values = Vec::with_capacity(1797 * 64);
    for (i, line) in DIGITS_CSV.lines().enumerate() {
        let row: Vec<f64> = line
            .split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::invalid(format!("data/digits.csv line {}: {e}", i + 1)))?;
        if row.len() != 64 {
            return Err(Error::invalid(format!(
                "data/digits.csv line {}: {} values, expected 64",
                i + 1,
                row.len()
            )));
        }
        let mean = row.iter().sum::<f64>() / 64.0;
        let norm = row
            .iter()
            .map(|v| (v - mean).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        values.extend(row.iter().map(|v| (v - mean) / norm));
    }
    let n = values.len() / 64;
    Ok(Tensor::from_vec(values, (n, 64), &Device::Cpu)?)
}

/// A dictionary of `atoms` unit-norm columns for the rows of `x` `(N, m)`: started from random
/// rows, then `iterations` rounds of codes C by FISTA (α, at most 200 iterations, f32) and
/// Wᵀ = (CᵀC + 10⁻⁶I)⁻¹CᵀX, columns renormalised (an unused atom restarts from a random row).
fn learn_dictionary(
    x: &Tensor,
    atoms: usize,
    alpha: f64,
    iterations: usize,
    seed: u64,
) -> Result<Tensor> {
    use rand::seq::index::sample;
    use rand::{Rng, SeedableRng};
    let (count, m) = x.dims2()?;
    if atoms == 0 || atoms > count {
        return Err(Error::invalid(format!(
            "lasso: a dictionary of {atoms} atoms cannot start from {count} signals"
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let start: Vec<u32> = sample(&mut rng, count, atoms)
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let mut wt: Vec<f64> = x
        .index_select(&Tensor::from_vec(start, atoms, &Device::Cpu)?, 0)?
        .flatten_all()?
        .to_vec1()?;
    let rows: Vec<f64> = x.flatten_all()?.to_vec1()?;
    let rows32: Vec<f32> = rows.iter().map(|&v| v as f32).collect();
    for round in 0..=iterations {
        // Unit-norm atoms (rows of Wᵀ); a dead atom restarts from a random signal.
        for a in 0..atoms {
            let atom = &mut wt[a * m..(a + 1) * m];
            let mut norm = atom.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm < 1e-8 {
                let r = rng.random_range(0..count);
                atom.copy_from_slice(&rows[r * m..(r + 1) * m]);
                norm = atom.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            }
            atom.iter_mut().for_each(|v| *v /= norm);
        }
        if round == iterations {
            break;
        }
        let w = Tensor::from_vec(wt.clone(), (atoms, m), &Device::Cpu)?
            .t()?
            .contiguous()?;
        let ls = LeastSquares::new(&w, 0.1, 0.0)?;
        // Codes by the fused f32 FISTA (with restart): learning needs no more precision.
        let fista = crate::solver::FusedLasso::new(&ls, alpha, 1.0 / ls.lipschitz()?, true, true)?;
        let mut codes = vec![0.0f32; count * atoms];
        fista.run(&rows32, &mut codes, 200, 1e-5, 1)?;
        let codes = Tensor::from_vec(codes, (count, atoms), &Device::Cpu)?.to_dtype(DType::F64)?;
        let mut ctc: Vec<f64> = codes.t()?.matmul(&codes)?.flatten_all()?.to_vec1()?;
        for a in 0..atoms {
            ctc[a * atoms + a] += 1e-6;
        }
        let ctx: Vec<f64> = codes.t()?.matmul(x)?.flatten_all()?.to_vec1()?;
        let chol = crate::linalg::Cholesky::factor(&ctc, atoms)
            .ok_or_else(|| Error::invalid("lasso: dictionary update is singular"))?;
        let mut column = vec![0.0; atoms];
        for j in 0..m {
            for a in 0..atoms {
                column[a] = ctx[a * m + j];
            }
            chol.solve_in_place(&mut column);
            for a in 0..atoms {
                wt[a * m + j] = column[a];
            }
        }
    }
    Ok(Tensor::from_vec(wt, (atoms, m), &Device::Cpu)?
        .t()?
        .contiguous()?)
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
            signals: Signals::Planted,
            dictionary_iterations: 10,
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
    /// The signal pool of `signals = "digits"`.
    pool: Option<Tensor>,
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
        let (mut smooth, pool) = match c.signals {
            Signals::Planted => (
                LeastSquares::lasso_benchmark(c.signal_dim, c.code_dim, c.dictionary_seed)?
                    .with_sampler(c.density, c.noise)?,
                None,
            ),
            Signals::Digits => {
                if c.signal_dim != 64 {
                    return Err(Error::invalid(format!(
                        "lasso: digits signals are 8×8 images, so signal_dim must be 64, not {}",
                        c.signal_dim
                    )));
                }
                let x = digits()?;
                let train = x.narrow(0, 0, x.dim(0)? * 4 / 5)?;
                let w = learn_dictionary(
                    &train,
                    c.code_dim,
                    c.alpha,
                    c.dictionary_iterations,
                    c.dictionary_seed,
                )?;
                (LeastSquares::new(&w, c.density, c.noise)?, Some(x))
            }
        };
        if let Some(db) = c.snr_db {
            smooth = smooth.with_snr_db(db)?;
        }
        let lipschitz = smooth.lipschitz()?;
        Ok(Lasso {
            config,
            smooth,
            lipschitz,
            pool,
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

    /// Digits: the first 80% of the images (the last 20% are held out).
    fn sample_contexts(&self, n: usize, rng: &mut StdRng, device: &Device) -> Result<Tensor> {
        match &self.pool {
            Some(pool) => {
                let train = pool.dim(0)? * 4 / 5;
                draw_rows(pool, 0..train, n, rng, device)
            }
            None => self.smooth.sample_contexts(n, rng, device),
        }
    }

    /// Digits: the last 20% of the images, which training never draws.
    fn sample_held_out(&self, n: usize, rng: &mut StdRng, device: &Device) -> Result<Tensor> {
        match &self.pool {
            Some(pool) => {
                let size = pool.dim(0)?;
                draw_rows(pool, size * 4 / 5..size, n, rng, device)
            }
            None => self.sample_contexts(n, rng, device),
        }
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
        if self.pool.is_some() {
            return Ok(None);
        }
        Ok(Some(self.smooth.sample_with_codes(n, rng, device)?))
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
