//! Proximal gradient methods for F(y) = f(y; x) + g(y): ISTA and FISTA with adaptive restart
//! (tutorial §6.2), with the prox operators of ℓ1, elastic net, box and non-negativity.

use candle_core::Tensor;

use super::Solver;
use crate::problem::Problem;
use crate::{Error, Result};

/// prox_{t g}(v) = argmin_u g(u) + ‖u − v‖²/(2t) for the supported regularisers g.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProxOperator {
    /// g = α‖y‖₁: soft thresholding sign(v) max(|v| − tα, 0).
    L1 {
        /// α ≥ 0.
        alpha: f64,
    },
    /// g = l1‖y‖₁ + (l2/2)‖y‖²: soft(v, t·l1) / (1 + t·l2).
    ElasticNet {
        /// ℓ1 weight ≥ 0.
        l1: f64,
        /// ℓ2 weight ≥ 0.
        l2: f64,
    },
    /// g = indicator of [lo, hi]ⁿ: clamp.
    Box {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
    /// g = indicator of the orthant: max(v, 0).
    NonNegative,
}

fn soft_threshold(v: &Tensor, k: f64) -> Result<Tensor> {
    Ok(v.sign()?.mul(&v.abs()?.affine(1.0, -k)?.relu()?)?)
}

impl ProxOperator {
    /// Checks the weights and bounds.
    pub fn validate(&self) -> Result<()> {
        let ok = match *self {
            ProxOperator::L1 { alpha } => alpha.is_finite() && alpha >= 0.0,
            ProxOperator::ElasticNet { l1, l2 } => {
                l1.is_finite() && l2.is_finite() && l1 >= 0.0 && l2 >= 0.0
            }
            ProxOperator::Box { lo, hi } => lo.is_finite() && hi.is_finite() && lo <= hi,
            ProxOperator::NonNegative => true,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(format!("invalid prox operator {self:?}")))
        }
    }

    /// prox_{t g}(v), row-wise.
    pub fn prox(&self, v: &Tensor, t: f64) -> Result<Tensor> {
        match *self {
            ProxOperator::L1 { alpha } => soft_threshold(v, t * alpha),
            ProxOperator::ElasticNet { l1, l2 } => {
                Ok(soft_threshold(v, t * l1)?.affine(1.0 / (1.0 + t * l2), 0.0)?)
            }
            ProxOperator::Box { lo, hi } => Ok(v.clamp(lo, hi)?),
            ProxOperator::NonNegative => Ok(v.relu()?),
        }
    }

    /// g(y) per row (0 for the indicators, whose prox keeps y feasible).
    pub fn value(&self, y: &Tensor) -> Result<Tensor> {
        Ok(match *self {
            ProxOperator::L1 { alpha } => y.abs()?.sum(1)?.affine(alpha, 0.0)?,
            ProxOperator::ElasticNet { l1, l2 } => y
                .abs()?
                .sum(1)?
                .affine(l1, 0.0)?
                .add(&y.sqr()?.sum(1)?.affine(0.5 * l2, 0.0)?)?,
            ProxOperator::Box { .. } | ProxOperator::NonNegative => y.zeros_like()?.sum(1)?,
        })
    }
}

/// # Proximal gradient (ISTA / FISTA)
/// ISTA: y ← prox_{s g}(y − s∇f(y)). FISTA (Beck & Teboulle 2009) adds the momentum
/// z = y + ((t_k − 1)/t_{k+1})(y − y_prev), t_{k+1} = (1 + √(1 + 4t_k²))/2, and with `restart`
/// resets an instance's momentum when ⟨z − y⁺, y⁺ − y⟩ > 0 (O'Donoghue & Candès 2015).
///
/// ## Requires
/// [`Problem::gradient`] of the smooth part f (no domain map: constraints go into g) and a step
/// s ≤ 1/L for an L-smooth f.
///
/// ## Optimality residual
/// The gradient-mapping norm ‖(y − prox_{s g}(y − s∇f(y)))/s‖, zero exactly at minimisers.
pub struct ProximalGradient<'a> {
    problem: &'a dyn Problem,
    prox: ProxOperator,
    step: f64,
    accelerated: bool,
    restart: bool,
}

/// The state of [`ProximalGradient`]: iterate, previous iterate, momentum t per instance.
#[derive(Debug, Clone)]
pub struct ProxState {
    y: Tensor,
    y_prev: Tensor,
    t: Tensor,
}

impl<'a> ProximalGradient<'a> {
    /// ISTA with step `step`.
    pub fn ista(problem: &'a dyn Problem, prox: ProxOperator, step: f64) -> Result<Self> {
        Self::new(problem, prox, step, false, false)
    }

    /// FISTA with step `step` and adaptive restart.
    pub fn fista(problem: &'a dyn Problem, prox: ProxOperator, step: f64) -> Result<Self> {
        Self::new(problem, prox, step, true, true)
    }

    /// FISTA with or without the adaptive restart (plain Beck–Teboulle momentum without it).
    pub fn with_restart(mut self, restart: bool) -> Self {
        self.restart = restart && self.accelerated;
        self
    }

    fn new(
        problem: &'a dyn Problem,
        prox: ProxOperator,
        step: f64,
        accelerated: bool,
        restart: bool,
    ) -> Result<Self> {
        prox.validate()?;
        if !(step.is_finite() && step > 0.0) {
            return Err(Error::invalid(format!(
                "proximal step must be > 0, got {step}"
            )));
        }
        Ok(ProximalGradient {
            problem,
            prox,
            step,
            accelerated,
            restart,
        })
    }

    fn forward_backward(&self, z: &Tensor, x: &Tensor) -> Result<Tensor> {
        let g = self.problem.gradient(z, x)?;
        self.prox.prox(&(z - (g * self.step)?)?, self.step)
    }
}

impl Solver for ProximalGradient<'_> {
    type State = ProxState;

    fn name(&self) -> &'static str {
        if self.accelerated {
            "fista"
        } else {
            "ista"
        }
    }

    fn init(&self, y0: &Tensor, _x: &Tensor) -> Result<ProxState> {
        let n = y0.dim(0)?;
        Ok(ProxState {
            y: y0.clone(),
            y_prev: y0.clone(),
            t: Tensor::ones((n, 1), y0.dtype(), y0.device())?,
        })
    }

    fn step(&self, s: ProxState, x: &Tensor) -> Result<ProxState> {
        if !self.accelerated {
            let y = self.forward_backward(&s.y, x)?;
            return Ok(ProxState {
                y_prev: s.y,
                y,
                t: s.t,
            });
        }
        let t_next = s.t.sqr()?.affine(4.0, 1.0)?.sqrt()?.affine(0.5, 0.5)?;
        let beta = s.t.affine(1.0, -1.0)?.div(&t_next)?;
        let z = s.y.add(&s.y.sub(&s.y_prev)?.broadcast_mul(&beta)?)?;
        let y = self.forward_backward(&z, x)?;
        let t_next = if self.restart {
            let bad = z.sub(&y)?.mul(&y.sub(&s.y)?)?.sum_keepdim(1)?.gt(0.0)?;
            bad.where_cond(&t_next.ones_like()?, &t_next)?
        } else {
            t_next
        };
        Ok(ProxState {
            y_prev: s.y,
            y,
            t: t_next,
        })
    }

    fn iterate<'s>(&self, s: &'s ProxState) -> &'s Tensor {
        &s.y
    }

    fn detach(&self, s: ProxState) -> ProxState {
        ProxState {
            y: s.y.detach(),
            y_prev: s.y_prev.detach(),
            t: s.t.detach(),
        }
    }

    fn value(&self, s: &ProxState, x: &Tensor) -> Result<Tensor> {
        Ok(self
            .problem
            .objective(&s.y, x)?
            .add(&self.prox.value(&s.y)?)?)
    }

    fn residual(&self, s: &ProxState, x: &Tensor) -> Result<Tensor> {
        let mapped = self.forward_backward(&s.y, x)?;
        Ok(s.y
            .sub(&mapped)?
            .affine(1.0 / self.step, 0.0)?
            .sqr()?
            .sum(1)?
            .sqrt()?)
    }
}
