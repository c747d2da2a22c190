//! Euclidean projections onto cones: the non-negative orthant (eq. 20) and the second-order
//! cone (eq. 25).

use candle_core::{Tensor, D};

use super::Projection;
use crate::Result;

/// max(0, y): the Euclidean projection onto the orthant Rⁿ₊ (eq. 20), the ReLU.
#[derive(Debug, Clone, Copy, Default)]
pub struct Orthant;

impl Projection for Orthant {
    fn name(&self) -> &'static str {
        "orthant"
    }

    fn project(&self, y: &Tensor) -> Result<Tensor> {
        Ok(y.relu()?)
    }

    fn violation(&self, y: &Tensor) -> Result<Tensor> {
        Ok(y.neg()?.relu()?.max(1)?)
    }

    fn idempotent(&self) -> bool {
        true
    }

    fn nonexpansive(&self) -> bool {
        true
    }
}

/// The Euclidean projection onto K = {(x, t) ∈ R^{m−1} × R : ‖x‖ ≤ t} (eq. 25), with the
/// cone's axis t the **last** coordinate: 0 when ‖x‖ ≤ −t, (x, t) when ‖x‖ ≤ t, else
/// ½(1 + t/‖x‖)(x, ‖x‖). Differentiated by autodiff of the three branches and a selection.
#[derive(Debug, Clone, Copy, Default)]
pub struct SecondOrderCone;

impl SecondOrderCone {
    fn split(y: &Tensor) -> Result<(Tensor, Tensor)> {
        let d = y.dim(1)?;
        Ok((y.narrow(1, 0, d - 1)?, y.narrow(1, d - 1, 1)?))
    }
}

impl Projection for SecondOrderCone {
    fn name(&self) -> &'static str {
        "second-order-cone"
    }

    fn project(&self, y: &Tensor) -> Result<Tensor> {
        let (x, t) = Self::split(y)?;
        let nx = x.sqr()?.sum_keepdim(1)?.sqrt()?;
        let safe = nx.clamp(1e-30, f64::INFINITY)?;
        let scale = t.div(&safe)?.affine(0.5, 0.5)?;
        let boundary = Tensor::cat(&[x.broadcast_mul(&scale)?, nx.mul(&scale)?], D::Minus1)?;
        let inside = nx.le(&t)?.broadcast_as(y.shape())?;
        let polar = nx.le(&t.neg()?)?.broadcast_as(y.shape())?;
        let zero = y.zeros_like()?;
        Ok(polar.where_cond(&zero, &inside.where_cond(y, &boundary)?)?)
    }

    fn violation(&self, y: &Tensor) -> Result<Tensor> {
        let (x, t) = Self::split(y)?;
        let nx = x.sqr()?.sum_keepdim(1)?.sqrt()?;
        Ok(nx.sub(&t)?.relu()?.squeeze(1)?)
    }

    fn idempotent(&self) -> bool {
        true
    }

    fn nonexpansive(&self) -> bool {
        true
    }
}
