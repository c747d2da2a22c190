//! Boxes: the entropic projection onto the open unit cube (eq. 21–22), a tanh squashing onto
//! (lo, hi)ⁿ, and the Euclidean projection onto [lo, hi]ⁿ.

use candle_core::Tensor;

use super::Projection;
use crate::{Error, Result};

/// σ(y) = 1/(1 + e⁻ʸ): the entropy-regularised projection onto the open cube (0, 1)ⁿ (eq. 21).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitCube;

/// max over each row of the distance below `lo` or above `hi` (0 inside the box).
pub(super) fn box_violation(y: &Tensor, lo: f64, hi: f64) -> Result<Tensor> {
    let below = y.affine(-1.0, lo)?.relu()?;
    let above = y.affine(1.0, -hi)?.relu()?;
    Ok(below.maximum(&above)?.max(1)?)
}

impl Projection for UnitCube {
    fn name(&self) -> &'static str {
        "unit-cube"
    }

    fn project(&self, y: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::sigmoid(y)?)
    }

    fn violation(&self, y: &Tensor) -> Result<Tensor> {
        box_violation(y, 0.0, 1.0)
    }

    fn idempotent(&self) -> bool {
        false
    }

    fn nonexpansive(&self) -> bool {
        false
    }
}

fn check_bounds(lo: f64, hi: f64) -> Result<()> {
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return Err(Error::invalid(format!(
            "a box needs finite bounds lo < hi, got [{lo}, {hi}]"
        )));
    }
    Ok(())
}

/// lo + (hi − lo)(tanh(y) + 1)/2: the smooth squashing onto the open box (lo, hi)ⁿ used for
/// bounded actions in control (§5.1.2).
#[derive(Debug, Clone, Copy)]
pub struct TanhBox {
    lo: f64,
    hi: f64,
}

impl TanhBox {
    /// The box (lo, hi)ⁿ; refuses non-finite or empty bounds.
    pub fn new(lo: f64, hi: f64) -> Result<Self> {
        check_bounds(lo, hi)?;
        Ok(TanhBox { lo, hi })
    }
}

impl Projection for TanhBox {
    fn name(&self) -> &'static str {
        "tanh-box"
    }

    fn project(&self, y: &Tensor) -> Result<Tensor> {
        let half = 0.5 * (self.hi - self.lo);
        Ok(y.tanh()?.affine(half, self.lo + half)?)
    }

    fn violation(&self, y: &Tensor) -> Result<Tensor> {
        box_violation(y, self.lo, self.hi)
    }

    fn idempotent(&self) -> bool {
        false
    }

    fn nonexpansive(&self) -> bool {
        false
    }
}

/// clamp(y, lo, hi): the Euclidean projection onto the closed box [lo, hi]ⁿ.
#[derive(Debug, Clone, Copy)]
pub struct ClipBox {
    lo: f64,
    hi: f64,
}

impl ClipBox {
    /// The box [lo, hi]ⁿ; refuses non-finite or empty bounds.
    pub fn new(lo: f64, hi: f64) -> Result<Self> {
        check_bounds(lo, hi)?;
        Ok(ClipBox { lo, hi })
    }
}

impl Projection for ClipBox {
    fn name(&self) -> &'static str {
        "clip-box"
    }

    fn project(&self, y: &Tensor) -> Result<Tensor> {
        Ok(y.clamp(self.lo, self.hi)?)
    }

    fn violation(&self, y: &Tensor) -> Result<Tensor> {
        box_violation(y, self.lo, self.hi)
    }

    fn idempotent(&self) -> bool {
        true
    }

    fn nonexpansive(&self) -> bool {
        true
    }
}
