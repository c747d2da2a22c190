//! The one-dimensional landscape of the tutorial's Figure 1 (and Figure 3).
//!
//! f(y; x) = σ((y − s(x))² / 80) with s(x) = sin x + x(1 + 0.1 cos x) and x ~ U(−5, 5), where
//! σ is the logistic function. f is minimised exactly at y*(x) = s(x).

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::Problem;
use crate::{Error, Result};

/// Settings of the [`Toy1d`] family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Toy1dConfig {
    /// Contexts are drawn from U(−range, range) (default 5).
    pub range: f64,
}

impl Default for Toy1dConfig {
    fn default() -> Self {
        Toy1dConfig { range: 5.0 }
    }
}

/// The Figure 1 landscape; see the module documentation.
#[derive(Debug, Clone)]
pub struct Toy1d {
    config: Toy1dConfig,
}

impl Toy1d {
    /// Validates the configuration.
    pub fn new(config: Toy1dConfig) -> Result<Self> {
        if !(config.range.is_finite() && config.range > 0.0) {
            return Err(Error::invalid("toy1d: range must be finite and > 0"));
        }
        Ok(Toy1d { config })
    }

    /// s(x) = sin x + x(1 + 0.1 cos x), the minimiser y*(x).
    pub fn center(x: &Tensor) -> Result<Tensor> {
        let inner = (x.cos()? * 0.1)?.affine(1.0, 1.0)?;
        Ok(x.sin()?.add(&x.mul(&inner)?)?)
    }
}

impl Problem for Toy1d {
    fn name(&self) -> &str {
        "toy1d"
    }

    fn context_dim(&self) -> usize {
        1
    }

    fn solution_dim(&self) -> usize {
        1
    }

    fn sample_contexts(&self, n: usize, rng: &mut StdRng, device: &Device) -> Result<Tensor> {
        let r = self.config.range;
        let data: Vec<f64> = (0..n).map(|_| rng.random_range(-r..r)).collect();
        Ok(Tensor::from_vec(data, (n, 1), device)?.to_dtype(DType::F32)?)
    }

    fn objective(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        let u = y.sub(&Self::center(x)?)?.sqr()?.affine(1.0 / 80.0, 0.0)?;
        Ok(candle_nn::ops::sigmoid(&u)?.squeeze(1)?)
    }

    /// Closed form: ∇_y f = σ'(u) · 2(y − s(x))/80 with u = (y − s(x))²/80.
    fn gradient(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        let r = y.sub(&Self::center(x)?)?;
        let s = candle_nn::ops::sigmoid(&r.sqr()?.affine(1.0 / 80.0, 0.0)?)?;
        let ds = s.mul(&s.affine(-1.0, 1.0)?)?;
        Ok(ds.mul(&r)?.affine(2.0 / 80.0, 0.0)?)
    }

    /// The domain is all of Rⁿ (π_Y is the identity), so this is [`Problem::gradient`].
    fn domain_gradient(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        self.gradient(y, x)
    }

    fn solve_exact(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.check_contexts(x)?;
        Ok(Some(Self::center(x)?))
    }
}
