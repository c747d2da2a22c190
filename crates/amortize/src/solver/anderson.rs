//! Anderson acceleration (type II) of a fixed-point iteration y ← g(y; x) (tutorial §6.4,
//! eq. 47–48).
//!
//! With the last k ≤ M + 1 iterates y_i and their images g_i = g(y_i), residuals
//! R = [g_i − y_i], the mixing weights solve the ridge-regularised least squares
//! α* = argmin_{1ᵀα = 1} ‖Rα‖² + λ‖α‖², i.e. α* = H⁻¹1 / (1ᵀH⁻¹1) with H = RᵀR + λI, and the
//! next iterate is y⁺ = β Σ α_i g_i + (1 − β) Σ α_i y_i (eq. 47).

use std::collections::VecDeque;

use candle_core::{DType, Tensor};

use super::Solver;
use crate::problem::FixedPointMap;
use crate::{Error, Result};

/// # Anderson acceleration
/// Wraps any [`FixedPointMap`]; memory M (M = 0 is the plain iteration with mixing β).
///
/// ## Optimality residual
/// ‖g(y; x) − y‖ per instance.
pub struct Anderson<G> {
    map: G,
    memory: usize,
    beta: f64,
    ridge: f64,
}

/// The state of [`Anderson`]: the current iterate and the recent (y_i, g(y_i)) pairs.
pub struct AndersonState {
    y: Tensor,
    history: VecDeque<(Tensor, Tensor)>,
}

impl<G: FixedPointMap> Anderson<G> {
    /// Memory M ≥ 0, mixing β ∈ (0, 1], ridge λ ≥ 0.
    pub fn new(map: G, memory: usize, beta: f64, ridge: f64) -> Result<Self> {
        if !(beta > 0.0 && beta <= 1.0 && ridge.is_finite() && ridge >= 0.0) {
            return Err(Error::invalid(format!(
                "anderson: need 0 < beta <= 1 and ridge >= 0, got beta = {beta}, ridge = {ridge}"
            )));
        }
        Ok(Anderson {
            map,
            memory,
            beta,
            ridge,
        })
    }
}

/// Solves H z = 1 for a small symmetric positive definite H (row-major k×k) by Cholesky and
/// returns z / (1ᵀz); falls back to the last iterate's weight alone if H is singular.
fn mixing_weights(h: &[f64], k: usize) -> Vec<f64> {
    let mut l = vec![0.0; k * k];
    for i in 0..k {
        for j in 0..=i {
            let s: f64 = (0..j).map(|m| l[i * k + m] * l[j * k + m]).sum();
            if i == j {
                let d = h[i * k + i] - s;
                if d <= 0.0 || !d.is_finite() {
                    let mut e = vec![0.0; k];
                    e[k - 1] = 1.0;
                    return e;
                }
                l[i * k + i] = d.sqrt();
            } else {
                l[i * k + j] = (h[i * k + j] - s) / l[j * k + j];
            }
        }
    }
    let mut w = vec![0.0; k];
    for i in 0..k {
        let s: f64 = (0..i).map(|m| l[i * k + m] * w[m]).sum();
        w[i] = (1.0 - s) / l[i * k + i];
    }
    let mut z = vec![0.0; k];
    for i in (0..k).rev() {
        let s: f64 = (i + 1..k).map(|m| l[m * k + i] * z[m]).sum();
        z[i] = (w[i] - s) / l[i * k + i];
    }
    let total: f64 = z.iter().sum();
    if total.abs() < 1e-300 || !total.is_finite() {
        let mut e = vec![0.0; k];
        e[k - 1] = 1.0;
        return e;
    }
    z.iter().map(|v| v / total).collect()
}

/// The history (y_i, g_i), oldest first, stacked as two `(n, k, d)` tensors.
pub fn stack_history<'t>(
    history: impl Iterator<Item = (&'t Tensor, &'t Tensor)>,
) -> Result<(Tensor, Tensor)> {
    let (ys, gs): (Vec<Tensor>, Vec<Tensor>) = history.map(|(y, g)| (y.clone(), g.clone())).unzip();
    Ok((Tensor::stack(&ys, 1)?, Tensor::stack(&gs, 1)?))
}

/// The Anderson weights α* = H⁻¹1 / (1ᵀH⁻¹1), H = RRᵀ + λ·max diag(RRᵀ)·I (eq. 48), for
/// residuals `r` `(n, k, d)`; returned as a constant `(n, 1, k)` tensor (no graph: α* is
/// computed in f64 on the CPU).
pub fn mixing_weights_batched(r: &Tensor, ridge: f64) -> Result<Tensor> {
    let (n, k, _) = r.dims3()?;
    let h: Vec<f64> = r
        .matmul(&r.transpose(1, 2)?.contiguous()?)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    let mut alpha = Vec::with_capacity(n * k);
    for hi in h.chunks(k * k) {
        let mut reg = hi.to_vec();
        let scale = (0..k)
            .map(|i| reg[i * k + i])
            .fold(0.0, f64::max)
            .max(1e-300);
        for i in 0..k {
            reg[i * k + i] += ridge * scale;
        }
        alpha.extend(mixing_weights(&reg, k));
    }
    Ok(Tensor::from_vec(alpha, (n, 1, k), r.device())?.to_dtype(r.dtype())?)
}

/// AA_Update (eq. 47): β Σ αᵢ gᵢ + (1 − β) Σ αᵢ yᵢ for weights `alpha` `(n, 1, k)` and the
/// stacked history `(n, k, d)`; `beta` is a scalar.
pub fn anderson_update(alpha: &Tensor, ys: &Tensor, gs: &Tensor, beta: f64) -> Result<Tensor> {
    let mixed_g = alpha.matmul(gs)?.squeeze(1)?;
    if beta == 1.0 {
        return Ok(mixed_g);
    }
    let mixed_y = alpha.matmul(ys)?.squeeze(1)?;
    Ok(mixed_g
        .affine(beta, 0.0)?
        .add(&mixed_y.affine(1.0 - beta, 0.0)?)?)
}

impl<G: FixedPointMap> Solver for Anderson<G> {
    type State = AndersonState;

    fn name(&self) -> &'static str {
        "anderson"
    }

    fn init(&self, y0: &Tensor, _x: &Tensor) -> Result<AndersonState> {
        Ok(AndersonState {
            y: y0.clone(),
            history: VecDeque::new(),
        })
    }

    fn step(&self, mut s: AndersonState, x: &Tensor) -> Result<AndersonState> {
        let g = self.map.apply(&s.y, x)?;
        s.history.push_back((s.y.clone(), g));
        while s.history.len() > self.memory + 1 {
            s.history.pop_front();
        }
        let (y_stack, g_stack) = stack_history(s.history.iter().map(|(y, g)| (y, g)))?;
        let alpha = mixing_weights_batched(&g_stack.sub(&y_stack)?, self.ridge)?;
        s.y = anderson_update(&alpha, &y_stack, &g_stack, self.beta)?;
        Ok(s)
    }

    fn iterate<'s>(&self, s: &'s AndersonState) -> &'s Tensor {
        &s.y
    }

    fn detach(&self, s: AndersonState) -> AndersonState {
        AndersonState {
            y: s.y.detach(),
            history: s
                .history
                .into_iter()
                .map(|(y, g)| (y.detach(), g.detach()))
                .collect(),
        }
    }

    /// ‖g(y) − y‖², a merit value (fixed-point problems have no objective of their own).
    fn value(&self, s: &AndersonState, x: &Tensor) -> Result<Tensor> {
        Ok(self.map.apply(&s.y, x)?.sub(&s.y)?.sqr()?.sum(1)?)
    }

    fn residual(&self, s: &AndersonState, x: &Tensor) -> Result<Tensor> {
        Ok(self.value(s, x)?.sqrt()?)
    }
}
