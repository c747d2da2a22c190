//! Least squares with a fixed dictionary, the smooth part of the Lasso (tutorial eq. 36):
//! f(y; x) = ½‖x − W y‖², whose ℓ1 term α‖y‖₁ proximal solvers take as their prox
//! ([`crate::solver::ProxOperator::L1`]).

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use super::Problem;
use crate::{Error, Result};

/// # Least squares over sparse-coded signals
/// Context x ∈ Rᵐ a signal, solution y ∈ Rⁿ a code, f(y; x) = ½‖x − Wy‖² with ∇f = Wᵀ(Wy − x).
/// The sampler draws codes with Bernoulli(density)·N(0, 1) entries and returns
/// x = W y_true + noise·N(0, I) (the standard sparse-coding benchmark).
#[derive(Debug, Clone)]
pub struct LeastSquares {
    w64: Tensor,
    w32: Tensor,
    density: f64,
    noise: f64,
    /// When set, each signal's noise is scaled to this signal-to-noise ratio (dB) instead.
    snr_db: Option<f64>,
}

impl LeastSquares {
    /// The dictionary `w` (m×n, f64 values, no zero or non-finite column) with the code
    /// density and noise level of the sampler.
    pub fn new(w: &Tensor, density: f64, noise: f64) -> Result<Self> {
        let (m, n) = w.dims2()?;
        if m == 0 || n == 0 {
            return Err(Error::invalid("least squares: the dictionary is empty"));
        }
        if !(density > 0.0 && density <= 1.0 && noise.is_finite() && noise >= 0.0) {
            return Err(Error::invalid(format!(
                "least squares: need density in (0, 1] and noise >= 0, got {density}, {noise}"
            )));
        }
        let w64 = w.to_dtype(DType::F64)?;
        let values: Vec<f64> = w64.flatten_all()?.to_vec1()?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid(
                "least squares: the dictionary has NaN or infinite entries",
            ));
        }
        if let Some(j) = (0..n).find(|&j| (0..m).all(|i| values[i * n + j] == 0.0)) {
            return Err(Error::invalid(format!(
                "least squares: dictionary column {j} is zero"
            )));
        }
        Ok(LeastSquares {
            w32: w64.to_dtype(DType::F32)?,
            w64,
            density,
            noise,
            snr_db: None,
        })
    }

    /// The Lasso benchmark's dictionary: m×n with N(0, 1) entries and unit-norm columns, drawn
    /// from `seed`; codes 10% dense, noise 0.01.
    pub fn lasso_benchmark(m: usize, n: usize, seed: u64) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut w: Vec<f64> = (0..m * n)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        for j in 0..n {
            let norm = (0..m).map(|i| w[i * n + j].powi(2)).sum::<f64>().sqrt();
            for i in 0..m {
                w[i * n + j] /= norm;
            }
        }
        Self::new(&Tensor::from_vec(w, (m, n), &Device::Cpu)?, 0.1, 0.01)
    }

    /// The same dictionary with another code density and noise level for the sampler.
    pub fn with_sampler(self, density: f64, noise: f64) -> Result<Self> {
        Self::new(&self.w64, density, noise)
    }

    /// Noise scaled per signal to a signal-to-noise ratio of `db` decibels:
    /// σ = ‖W y_true‖/√m · 10^(−db/20) (the sparse-recovery benchmark's noisy setting).
    pub fn with_snr_db(mut self, db: f64) -> Result<Self> {
        if !db.is_finite() {
            return Err(Error::invalid(format!(
                "least squares: SNR must be finite, got {db}"
            )));
        }
        self.snr_db = Some(db);
        Ok(self)
    }

    /// The dictionary W (m×n, f64).
    pub fn dictionary(&self) -> &Tensor {
        &self.w64
    }

    fn w_for(&self, t: &Tensor) -> Result<Tensor> {
        let w = match t.dtype() {
            DType::F32 => &self.w32,
            DType::F64 => &self.w64,
            other => {
                return Err(Error::invalid(format!(
                    "least squares: unsupported {other:?}"
                )))
            }
        };
        Ok(w.to_device(t.device())?)
    }

    /// L = σ_max(W)², the Lipschitz constant of ∇f (power iteration on WᵀW to 1e-12).
    pub fn lipschitz(&self) -> Result<f64> {
        let (m, n) = self.w64.dims2()?;
        let w: Vec<f64> = self.w64.flatten_all()?.to_vec1()?;
        Ok(crate::linalg::spectral_norm_squared(
            &w, m, n, 1e-12, 10_000,
        ))
    }

    /// `count` signals and the codes that made them, `(count, m)` and `(count, n)` f32.
    pub fn sample_with_codes(
        &self,
        count: usize,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let (m, n) = self.w64.dims2()?;
        let codes: Vec<f64> = (0..count * n)
            .map(|_| {
                let on = rng.random::<f64>() < self.density;
                let z: f64 = StandardNormal.sample(rng);
                if on {
                    z
                } else {
                    0.0
                }
            })
            .collect();
        let codes = Tensor::from_vec(codes, (count, n), &Device::Cpu)?;
        let clean = codes.matmul(&self.w64.t()?)?;
        let sigma: Vec<f64> = match self.snr_db {
            Some(db) => {
                let power: Vec<f64> = clean.sqr()?.mean(1)?.to_vec1()?;
                power
                    .iter()
                    .map(|p| p.sqrt() * 10f64.powf(-db / 20.0))
                    .collect()
            }
            None => vec![self.noise; count],
        };
        let noise: Vec<f64> = (0..count * m)
            .map(|k| {
                sigma[k / m] * <StandardNormal as Distribution<f64>>::sample(&StandardNormal, rng)
            })
            .collect();
        let x = clean.add(&Tensor::from_vec(noise, (count, m), &Device::Cpu)?)?;
        Ok((
            x.to_dtype(DType::F32)?.to_device(device)?,
            codes.to_dtype(DType::F32)?.to_device(device)?,
        ))
    }
}

impl Problem for LeastSquares {
    fn name(&self) -> &str {
        "least-squares"
    }

    fn context_dim(&self) -> usize {
        self.w64.dim(0).unwrap_or(0)
    }

    fn solution_dim(&self) -> usize {
        self.w64.dim(1).unwrap_or(0)
    }

    fn sample_contexts(&self, n: usize, rng: &mut StdRng, device: &Device) -> Result<Tensor> {
        Ok(self.sample_with_codes(n, rng, device)?.0)
    }

    fn objective(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        let w = self.w_for(y)?;
        let r = y.matmul(&w.t()?)?.sub(x)?;
        Ok(r.sqr()?.sum(1)?.affine(0.5, 0.0)?)
    }

    fn gradient(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        let w = self.w_for(y)?;
        Ok(y.matmul(&w.t()?)?.sub(x)?.matmul(&w)?)
    }

    fn domain_gradient(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        self.gradient(y, x)
    }
}
