//! Implicit differentiation of a proximal inner problem (iMAML; tutorial §4.2.3, eq. 14,
//! Theorem 1).
//!
//! With y*(ŷ⁰) = argmin_y f(y; x) + λ/2‖y − ŷ⁰‖², stationarity ∇f(y*) + λ(y* − ŷ⁰) = 0 gives
//! ∂y*/∂ŷ⁰ = λ(∇²f(y*) + λI)⁻¹, a symmetric matrix. So for a loss L(y*),
//! ∂L/∂ŷ⁰ = λ(∇²f(y*) + λI)⁻¹ ∇L(y*), obtained by conjugate gradient with Hessian-vector
//! products from autodiff of ⟨∇f(y), v⟩, never forming ∇²f and never storing the inner
//! iterations.

use candle_core::{DType, Tensor};

use crate::autodiff::grad_at;
use crate::problem::Problem;
use crate::Result;

/// v = λ(∇²_y Σᵢ f(yᵢ*; xᵢ) + λI)⁻¹ g by `iters` conjugate-gradient iterations (the rows are
/// independent blocks of one symmetric system; stops early when the residual is below 1e-10
/// of g's norm). Needs second-order autodiff when the problem's gradient comes from autodiff.
pub fn implicit_gradient(
    problem: &dyn Problem,
    y_star: &Tensor,
    x: &Tensor,
    g: &Tensor,
    lambda: f64,
    iters: usize,
) -> Result<Tensor> {
    let y_star = y_star.detach();
    let x = x.to_dtype(y_star.dtype())?;
    let dot = |a: &Tensor, b: &Tensor| -> Result<f64> {
        Ok(a.mul(b)?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?)
    };
    // (H + λI) p by autodiff of ⟨∇f(y), p⟩ at y*.
    let apply = |p: &Tensor| -> Result<Tensor> {
        let p = p.detach();
        let hvp = grad_at(&y_star, |y| {
            Ok(problem.domain_gradient(y, &x)?.mul(&p)?.sum_all()?)
        })?
        .detach();
        Ok(hvp.add(&p.affine(lambda, 0.0)?)?)
    };
    let g = g.detach();
    let mut w = g.zeros_like()?;
    let mut r = g.clone();
    let mut p = r.clone();
    let mut rr = dot(&r, &r)?;
    let stop = 1e-20 * rr.max(f64::MIN_POSITIVE);
    for _ in 0..iters {
        if rr <= stop {
            break;
        }
        let ap = apply(&p)?;
        let pap = dot(&p, &ap)?;
        if pap <= 0.0 {
            break; // not positive definite along p: keep what we have
        }
        let alpha = rr / pap;
        w = w.add(&p.affine(alpha, 0.0)?)?;
        r = r.sub(&ap.affine(alpha, 0.0)?)?;
        let rr_new = dot(&r, &r)?;
        p = r.add(&p.affine(rr_new / rr, 0.0)?)?;
        rr = rr_new;
    }
    Ok(w.affine(lambda, 0.0)?)
}
