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

/// Solves H z = b for a small symmetric positive definite H (row-major k×k) by Cholesky;
/// `None` when H is not numerically positive definite.
fn spd_solve(h: &[f64], k: usize, b: &[f64]) -> Option<Vec<f64>> {
    let mut l = vec![0.0; k * k];
    for i in 0..k {
        for j in 0..=i {
            let s: f64 = (0..j).map(|m| l[i * k + m] * l[j * k + m]).sum();
            if i == j {
                let d = h[i * k + i] - s;
                if d <= 0.0 || !d.is_finite() {
                    return None;
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
        w[i] = (b[i] - s) / l[i * k + i];
    }
    let mut z = vec![0.0; k];
    for i in (0..k).rev() {
        let s: f64 = (i + 1..k).map(|m| l[m * k + i] * z[m]).sum();
        z[i] = (w[i] - s) / l[i * k + i];
    }
    z.iter().all(|v| v.is_finite()).then_some(z)
}

/// z = H⁻¹1 for a small SPD H (row-major k×k); the last unit vector when H is singular or
/// 1ᵀz vanishes (the plain iteration's weights after normalisation).
fn solve_ones(h: &[f64], k: usize) -> Vec<f64> {
    let fallback = || {
        let mut e = vec![0.0; k];
        e[k - 1] = 1.0;
        e
    };
    match spd_solve(h, k, &vec![1.0; k]) {
        Some(z) if z.iter().sum::<f64>().abs() > 1e-300 => z,
        _ => fallback(),
    }
}

/// z = H⁻¹1 per instance for H `(n, k, k)`, with the implicit-function backward
/// ∂L/∂H = −(H⁻¹ ∂L/∂z) zᵀ, so that Anderson's weights can be differentiated.
struct SolveOnes;

impl candle_core::CustomOp1 for SolveOnes {
    fn name(&self) -> &'static str {
        "anderson-solve-ones"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (n, k, _) = layout.shape().dims3()?;
        let h: Vec<f64> = match storage {
            candle_core::CpuStorage::F32(v) => v.iter().map(|x| *x as f64).collect(),
            candle_core::CpuStorage::F64(v) => v.clone(),
            _ => candle_core::bail!("anderson-solve-ones: f32 or f64 only"),
        };
        let h = &h[layout.start_offset()..layout.start_offset() + n * k * k];
        let z: Vec<f64> = h.chunks(k * k).flat_map(|hi| solve_ones(hi, k)).collect();
        let out = match storage {
            candle_core::CpuStorage::F32(_) => {
                candle_core::CpuStorage::F32(z.iter().map(|v| *v as f32).collect())
            }
            _ => candle_core::CpuStorage::F64(z),
        };
        Ok((out, candle_core::Shape::from((n, k))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (n, k, _) = arg.dims3()?;
        let h: Vec<f64> = arg.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let g: Vec<f64> = grad_res.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let mut w = Vec::with_capacity(n * k);
        for (hi, gi) in h.chunks(k * k).zip(g.chunks(k)) {
            w.extend(spd_solve(hi, k, gi).unwrap_or_else(|| vec![0.0; k]));
        }
        let w = Tensor::from_vec(w, (n, k, 1), arg.device())?.to_dtype(arg.dtype())?;
        let grad = w.matmul(&res.unsqueeze(1)?)?.neg()?;
        Ok(Some(grad))
    }
}

/// Anderson's weights α* = H⁻¹1 / (1ᵀH⁻¹1) (eq. 48 in closed form) for residuals `r`
/// `(n, k, d)`, as a differentiable `(n, 1, k)` tensor: H = RRᵀ + λ·s·I with the scale
/// s = max diag(RRᵀ), z = H⁻¹1 by a custom op (Cholesky in f64) whose backward is
/// the implicit one, α = z / 1ᵀz. A singular H gives the plain iteration's weights (0, …, 0, 1).
pub fn anderson_weights(r: &Tensor, ridge: f64) -> Result<Tensor> {
    let (n, k, _) = r.dims3()?;
    let gram = r.matmul(&r.transpose(1, 2)?.contiguous()?)?;
    let eye = Tensor::eye(k, DType::F64, r.device())?.to_dtype(r.dtype())?;
    let scale = gram
        .broadcast_mul(&eye)?
        .sum(2)?
        .max_keepdim(1)?
        .clamp(1e-300, f64::INFINITY)?
        .affine(ridge, 0.0)?
        .reshape((n, 1, 1))?;
    let shift = scale.broadcast_mul(&eye)?;
    let h = gram.add(&shift)?.contiguous()?;
    let z = h.apply_op1(SolveOnes)?;
    Ok(z.broadcast_div(&z.sum_keepdim(1)?)?.unsqueeze(1)?)
}

/// The history (y_i, g_i), oldest first, stacked as two `(n, k, d)` tensors.
pub fn stack_history<'t>(
    history: impl Iterator<Item = (&'t Tensor, &'t Tensor)>,
) -> Result<(Tensor, Tensor)> {
    let (ys, gs): (Vec<Tensor>, Vec<Tensor>) = history.map(|(y, g)| (y.clone(), g.clone())).unzip();
    Ok((Tensor::stack(&ys, 1)?, Tensor::stack(&gs, 1)?))
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
        let alpha = anderson_weights(&g_stack.sub(&y_stack)?, self.ridge)?;
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
