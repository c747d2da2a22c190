//! The one-dimensional map of the tutorial's Figure 9 (several fixed points), shifted by a
//! context: g(y; x) = x − 2 sin y + 0.9 y (1 + 0.1 cos y)², x ~ U(−range, range).
//!
//! Near y = 0 the slope is g′ ≈ −0.91, so the plain iteration converges there slowly and with
//! alternating sign, which is what acceleration (Anderson, learned) is for.

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::fixed_point::{
    fixed_point_residual, normalised_residual, solve_fixed_point, FixedPointMap,
};
use super::Problem;
use crate::{Error, Result};

/// Settings of [`FixedPointToy`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FixedPointToyConfig {
    /// Shifts are drawn from U(−range, range) (default 1).
    pub range: f64,
}

impl Default for FixedPointToyConfig {
    fn default() -> Self {
        FixedPointToyConfig { range: 1.0 }
    }
}

/// The Figure 9 map; see the module documentation.
#[derive(Debug, Clone)]
pub struct FixedPointToy {
    config: FixedPointToyConfig,
}

impl FixedPointToy {
    /// Validates the configuration.
    pub fn new(config: FixedPointToyConfig) -> Result<Self> {
        if !(config.range.is_finite() && config.range > 0.0) {
            return Err(Error::invalid(
                "fixed-point-toy: range must be finite and > 0",
            ));
        }
        Ok(FixedPointToy { config })
    }
}

impl FixedPointMap for FixedPointToy {
    fn apply(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(y.dtype())?;
        let bend = y.cos()?.affine(0.1, 1.0)?.sqr()?;
        Ok(x.sub(&y.sin()?.affine(2.0, 0.0)?)?
            .add(&y.mul(&bend)?.affine(0.9, 0.0)?)?)
    }
}

impl Problem for FixedPointToy {
    fn name(&self) -> &str {
        "fixed-point-toy"
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

    /// The normalised residual |g(y) − y| / |g(0)|.
    fn objective(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        normalised_residual(self, y, x)
    }

    fn solve_exact(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.check_contexts(x)?;
        let zero = Tensor::zeros((x.dim(0)?, 1), DType::F64, x.device())?;
        Ok(Some(solve_fixed_point(self, &zero, x, 1e-10)?))
    }

    /// |g(y) − y|.
    fn residual(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        fixed_point_residual(self, y, x)
    }

    fn fixed_point_map(&self) -> Option<&dyn FixedPointMap> {
        Some(self)
    }
}
