//! The probability simplex Δ = {p : 1ᵀp = r, p ≥ 0}: entropic (softmax, eq. 24) and Euclidean
//! (sort-based) projections.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::{map_rows_f64, Projection};
use crate::{Error, Result};

/// softmax(y): the entropy-regularised projection onto the interior of the unit simplex
/// (eq. 24).
#[derive(Debug, Clone, Copy, Default)]
pub struct SoftmaxSimplex;

/// max(|1ᵀy − r|, largest negative entry) per row (0 on the simplex of mass r).
pub(super) fn simplex_violation(y: &Tensor, radius: f64) -> Result<Tensor> {
    let sum_gap = y.sum(1)?.affine(1.0, -radius)?.abs()?;
    let negative = y.neg()?.relu()?.max(1)?;
    Ok(sum_gap.maximum(&negative)?)
}

impl Projection for SoftmaxSimplex {
    fn name(&self) -> &'static str {
        "softmax-simplex"
    }

    /// exp(y − m) / Σ exp(y − m) with the row maximum m detached (value and gradient are
    /// unchanged by the shift); written as tensor ops so that it is differentiable to any order.
    fn project(&self, y: &Tensor) -> Result<Tensor> {
        let shift = y.max_keepdim(1)?.detach();
        let e = y.broadcast_sub(&shift)?.exp()?;
        Ok(e.broadcast_div(&e.sum_keepdim(1)?)?)
    }

    fn violation(&self, y: &Tensor) -> Result<Tensor> {
        simplex_violation(y, 1.0)
    }

    fn idempotent(&self) -> bool {
        false
    }

    fn nonexpansive(&self) -> bool {
        false
    }
}

/// The Euclidean projection onto {p : 1ᵀp = r, p ≥ 0}: p = max(y − τ, 0) with the threshold τ
/// found by sorting (Held et al. 1974; Duchi et al. 2008): with u sorted descending,
/// ρ = max{j : u_j − (Σ_{i≤j} u_i − r)/j > 0} and τ = (Σ_{i≤ρ} u_i − r)/ρ.
///
/// Backward (the Jacobian is piecewise constant): on the support S = {p > 0},
/// ∂L/∂y = s ⊙ (g − (Σ_S g)/|S|) with s the indicator of S.
#[derive(Debug, Clone, Copy)]
pub struct EuclideanSimplex {
    radius: f64,
}

impl Default for EuclideanSimplex {
    fn default() -> Self {
        EuclideanSimplex { radius: 1.0 }
    }
}

impl EuclideanSimplex {
    /// The simplex of total mass `radius` > 0.
    pub fn new(radius: f64) -> Result<Self> {
        if !(radius.is_finite() && radius > 0.0) {
            return Err(Error::invalid(format!(
                "the simplex radius must be finite and > 0, got {radius}"
            )));
        }
        Ok(EuclideanSimplex { radius })
    }
}

fn project_row(row: &[f64], radius: f64, out: &mut Vec<f64>) {
    let mut u = row.to_vec();
    u.sort_by(|a, b| b.total_cmp(a));
    let (mut cum, mut tau) = (0.0, 0.0);
    for (j, uj) in u.iter().enumerate() {
        cum += uj;
        let t = (cum - radius) / (j + 1) as f64;
        if uj - t > 0.0 {
            tau = t;
        }
    }
    out.extend(row.iter().map(|&v| (v - tau).max(0.0)));
}

impl CustomOp1 for EuclideanSimplex {
    fn name(&self) -> &'static str {
        "euclidean-simplex"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        map_rows_f64(storage, layout, "euclidean-simplex", |row, out| {
            project_row(row, self.radius, out)
        })
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let s = res.gt(0.0)?.to_dtype(grad.dtype())?;
        let count = s.sum_keepdim(1)?.clamp(1.0, f64::INFINITY)?;
        let mean = grad.mul(&s)?.sum_keepdim(1)?.div(&count)?;
        Ok(Some(s.mul(&grad.broadcast_sub(&mean)?)?))
    }
}

impl Projection for EuclideanSimplex {
    fn name(&self) -> &'static str {
        "simplex"
    }

    fn project(&self, y: &Tensor) -> Result<Tensor> {
        Ok(y.contiguous()?.apply_op1(*self)?)
    }

    fn violation(&self, y: &Tensor) -> Result<Tensor> {
        simplex_violation(y, self.radius)
    }

    fn idempotent(&self) -> bool {
        true
    }

    fn nonexpansive(&self) -> bool {
        true
    }
}
