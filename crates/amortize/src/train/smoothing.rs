//! Zeroth-order learning (tutorial §4.3.2, eq. 15): the Gaussian-smoothed loss
//! L_σ(θ) = E_{ε∼N(0,I)} L(θ + σε) and its antithetic evolution-strategies gradient estimator,
//! usable when the model or the objective cannot be differentiated.

use candle_core::{Tensor, Var};
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How the trainer gets ∇_θ L.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum GradientEstimator {
    /// Reverse-mode autodiff of the loss (default).
    #[default]
    Autodiff,
    /// The antithetic ES estimate of ∇L_σ (eq. 15); only forward passes.
    Es {
        /// Smoothing scale σ > 0.
        sigma: f64,
        /// Number N of antithetic pairs per step.
        samples: usize,
    },
    /// ES for the parameters that act on every iteration of an unrolled run
    /// ([`crate::model::Model::whole_run_params`]: the learned preconditioner of NeuralFP and
    /// HyperAA), reverse-mode autodiff for the others. Backpropagating through the truncated
    /// unroll sees only each parameter's effect on the next iterate, which is biased for them;
    /// through the whole unroll the gradient explodes (Metz et al. 2019). The ES estimate of the
    /// smoothed loss is unbiased for the whole run and costs 2N forward passes per step.
    Hybrid {
        /// Smoothing scale σ > 0.
        sigma: f64,
        /// Number N of antithetic pairs per step.
        samples: usize,
    },
}

impl GradientEstimator {
    /// Checks σ and N.
    pub fn validate(&self) -> Result<()> {
        if let GradientEstimator::Es { sigma, samples }
        | GradientEstimator::Hybrid { sigma, samples } = *self
        {
            if !(sigma.is_finite() && sigma > 0.0) || samples == 0 {
                return Err(Error::invalid(
                    "train.gradient: es and hybrid need sigma finite and > 0 and samples >= 1",
                ));
            }
        }
        Ok(())
    }
}

/// The antithetic ES estimate of ∇_θ L_σ at the current θ (the values of `vars`):
/// ĝ = 1/(2Nσ) Σᵢ (L(θ + σεᵢ) − L(θ − σεᵢ)) εᵢ with εᵢ ∼ N(0, I) drawn from `rng`.
/// It is unbiased for ∇L_σ, and L_σ has the same gradient as L when L is quadratic. Returns
/// the estimate (one tensor per variable) and the mean of the 2N loss values; θ is restored.
pub fn es_gradient(
    vars: &[Var],
    sigma: f64,
    samples: usize,
    rng: &mut StdRng,
    mut loss: impl FnMut() -> Result<f64>,
) -> Result<(Vec<Tensor>, f64)> {
    let theta: Vec<Tensor> = vars
        .iter()
        .map(|v| v.as_tensor().copy())
        .collect::<candle_core::Result<_>>()?;
    let mut grads: Vec<Tensor> = theta
        .iter()
        .map(|t| t.zeros_like())
        .collect::<candle_core::Result<_>>()?;
    let mut total = 0.0;
    let result = (|| -> Result<()> {
        for _ in 0..samples {
            let eps: Vec<Tensor> = theta
                .iter()
                .map(|t| {
                    let noise: Vec<f64> = (0..t.elem_count())
                        .map(|_| StandardNormal.sample(&mut *rng))
                        .collect();
                    Ok(Tensor::from_vec(noise, t.shape(), t.device())?.to_dtype(t.dtype())?)
                })
                .collect::<Result<_>>()?;
            let mut side = |sign: f64| -> Result<f64> {
                for ((v, t), e) in vars.iter().zip(&theta).zip(&eps) {
                    v.set(&t.add(&e.affine(sign * sigma, 0.0)?)?)?;
                }
                loss()
            };
            let plus = side(1.0)?;
            let minus = side(-1.0)?;
            if !(plus.is_finite() && minus.is_finite()) {
                return Err(Error::NonFinite {
                    what: "loss at an ES perturbation".into(),
                    step: 0,
                });
            }
            total += plus + minus;
            let weight = (plus - minus) / (2.0 * samples as f64 * sigma);
            for (g, e) in grads.iter_mut().zip(&eps) {
                *g = g.add(&e.affine(weight, 0.0)?)?;
            }
        }
        Ok(())
    })();
    for (v, t) in vars.iter().zip(&theta) {
        v.set(t)?;
    }
    result?;
    Ok((grads, total / (2 * samples) as f64))
}

/// The Gaussian smoothing f_σ(y) = E_{ε∼N(0,1)} f(y + σε) of a scalar function (eq. 15 in one
/// dimension), by the trapezoid rule over ε ∈ [−8, 8] on `points` nodes (≥ 3). Smoothing
/// commutes with expectations, so f_σ of y² is y² + σ² and of cos y is e^{−σ²/2} cos y.
pub fn smoothed_1d(f: impl Fn(f64) -> f64, y: f64, sigma: f64, points: usize) -> f64 {
    let points = points.max(3);
    let h = 16.0 / (points - 1) as f64;
    let norm = 1.0 / (2.0 * std::f64::consts::PI).sqrt();
    let mut total = 0.0;
    for i in 0..points {
        let e = -8.0 + i as f64 * h;
        let w = if i == 0 || i + 1 == points { 0.5 } else { 1.0 };
        total += w * norm * (-0.5 * e * e).exp() * f(y + sigma * e);
    }
    total * h
}
