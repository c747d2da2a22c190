//! The Birkhoff polytope of k×k doubly stochastic matrices, reached by Sinkhorn scaling.

use candle_core::{Tensor, D};

use super::Projection;
use crate::{Error, Result};

/// The entropic projection onto the doubly stochastic k×k matrices (rows of k² numbers,
/// row-major): P = diag(u) exp(Y/τ) diag(v) with u, v from `iterations` Sinkhorn steps,
/// alternately normalising rows and columns in the log domain (Cuturi 2013). Differentiated by
/// autodiff through the unrolled steps, which is exact for the map computed.
#[derive(Debug, Clone, Copy)]
pub struct Birkhoff {
    k: usize,
    temperature: f64,
    iterations: usize,
}

impl Birkhoff {
    /// k×k matrices, temperature τ > 0, and the number of Sinkhorn steps (≥ 1).
    pub fn new(k: usize, temperature: f64, iterations: usize) -> Result<Self> {
        if k == 0 || iterations == 0 || !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::invalid(format!(
                "birkhoff: need k ≥ 1, iterations ≥ 1 and temperature > 0 (got {k}, {iterations}, {temperature})"
            )));
        }
        Ok(Birkhoff {
            k,
            temperature,
            iterations,
        })
    }

    fn matrices(&self, y: &Tensor) -> Result<Tensor> {
        let (n, d) = y.dims2()?;
        if d != self.k * self.k {
            return Err(Error::invalid(format!(
                "birkhoff: rows must hold k² = {} numbers, got {d}",
                self.k * self.k
            )));
        }
        Ok(y.reshape((n, self.k, self.k))?)
    }
}

/// log Σ exp over `dim`, keeping it, stable (the detached shift leaves value and gradient).
fn logsumexp_keepdim(t: &Tensor, dim: usize) -> Result<Tensor> {
    let shift = t.max_keepdim(dim)?.detach();
    Ok(t.broadcast_sub(&shift)?
        .exp()?
        .sum_keepdim(dim)?
        .log()?
        .broadcast_add(&shift)?)
}

impl Projection for Birkhoff {
    fn name(&self) -> &'static str {
        "birkhoff"
    }

    fn project(&self, y: &Tensor) -> Result<Tensor> {
        let n = y.dim(0)?;
        let mut logp = self.matrices(y)?.affine(1.0 / self.temperature, 0.0)?;
        for _ in 0..self.iterations {
            logp = logp.broadcast_sub(&logsumexp_keepdim(&logp, 2)?)?;
            logp = logp.broadcast_sub(&logsumexp_keepdim(&logp, 1)?)?;
        }
        Ok(logp.exp()?.reshape((n, self.k * self.k))?)
    }

    fn violation(&self, y: &Tensor) -> Result<Tensor> {
        let m = self.matrices(y)?;
        let rows = m.sum(2)?.affine(1.0, -1.0)?.abs()?.max(D::Minus1)?;
        let cols = m.sum(1)?.affine(1.0, -1.0)?.abs()?.max(D::Minus1)?;
        let negative = m.neg()?.relu()?.flatten_from(1)?.max(D::Minus1)?;
        Ok(rows.maximum(&cols)?.maximum(&negative)?)
    }

    fn idempotent(&self) -> bool {
        false
    }

    fn nonexpansive(&self) -> bool {
        false
    }
}
