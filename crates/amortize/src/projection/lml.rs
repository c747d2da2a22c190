//! The limited multi-label projection (LML; Amos, Koltun & Kolter 2019), the soft top-k
//! behind the differentiable cross-entropy method: the entropic projection onto the capped
//! simplex {y ∈ [0, 1]ⁿ : 1ᵀy = k}.
//!
//! π(x) = argmin_{0<y<1, 1ᵀy=k} −xᵀy/τ − H_b(y) has the solution y_i = σ((x_i + ν)/τ), with
//! the scalar ν such that Σ_i y_i = k, found by bisection. Differentiating the optimality
//! conditions gives, with d_i = y_i(1 − y_i)/τ, the VJP ∂L/∂x = d ⊙ g − d (dᵀg)/(1ᵀd).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::boxes::box_violation;
use super::simplex::simplex_violation;
use super::{map_rows_f64, Projection};
use crate::{Error, Result};

/// Soft top-k onto {y ∈ (0, 1)ⁿ : 1ᵀy = k} with temperature τ.
#[derive(Debug, Clone, Copy)]
pub struct CappedSimplex {
    k: f64,
    temperature: f64,
}

impl CappedSimplex {
    /// Mass k (0 < k < n is required of the rows it is applied to) and temperature τ > 0.
    pub fn new(k: f64, temperature: f64) -> Result<Self> {
        if !(k.is_finite() && k > 0.0 && temperature.is_finite() && temperature > 0.0) {
            return Err(Error::invalid(format!(
                "capped simplex: need k > 0 and temperature > 0, got k = {k}, τ = {temperature}"
            )));
        }
        Ok(CappedSimplex { k, temperature })
    }

    fn solve_row(&self, x: &[f64], out: &mut Vec<f64>) {
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let mass = |nu: f64| {
            x.iter()
                .map(|&xi| sig((xi + nu) / self.temperature))
                .sum::<f64>()
        };
        let (xmin, xmax) = x
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        // mass(ν) rises from 0 to n; this bracket holds mass(lo) < k < mass(hi) for 0 < k < n.
        let span = 40.0 * self.temperature;
        let (mut lo, mut hi) = (-xmax - span, -xmin + span);
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if mass(mid) < self.k {
                lo = mid;
            } else {
                hi = mid;
            }
            if hi - lo < 1e-15 * (1.0 + lo.abs()) {
                break;
            }
        }
        let nu = 0.5 * (lo + hi);
        out.extend(x.iter().map(|&xi| sig((xi + nu) / self.temperature)));
    }
}

impl CustomOp1 for CappedSimplex {
    fn name(&self) -> &'static str {
        "capped-simplex"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = *layout.shape().dims().last().unwrap_or(&1);
        if self.k >= d as f64 {
            candle_core::bail!(
                "capped-simplex: k = {} must be below the row length {d}",
                self.k
            )
        }
        map_rows_f64(storage, layout, "capped-simplex", |row, out| {
            self.solve_row(row, out)
        })
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let d = res
            .mul(&res.affine(-1.0, 1.0)?)?
            .affine(1.0 / self.temperature, 0.0)?;
        let dg = d.mul(grad)?;
        let coef = dg
            .sum_keepdim(1)?
            .div(&d.sum_keepdim(1)?.clamp(1e-300, f64::INFINITY)?)?;
        Ok(Some(dg.sub(&d.broadcast_mul(&coef)?)?))
    }
}

impl Projection for CappedSimplex {
    fn name(&self) -> &'static str {
        "capped-simplex"
    }

    fn project(&self, y: &Tensor) -> Result<Tensor> {
        Ok(y.contiguous()?.apply_op1(*self)?)
    }

    /// The capped simplex is the simplex of mass k intersected with the unit box.
    fn violation(&self, y: &Tensor) -> Result<Tensor> {
        Ok(simplex_violation(y, self.k)?.maximum(&box_violation(y, 0.0, 1.0)?)?)
    }

    fn idempotent(&self) -> bool {
        false
    }

    fn nonexpansive(&self) -> bool {
        false
    }
}
