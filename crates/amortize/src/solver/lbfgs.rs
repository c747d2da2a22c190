//! Limited-memory BFGS (Nocedal & Wright 2006, Algorithm 7.4 and 7.5), batched over instances.

use std::collections::VecDeque;

use candle_core::Tensor;

use super::gradient::Backtracking;
use super::Solver;
use crate::problem::Problem;
use crate::{Error, Result};

/// # L-BFGS
/// The quasi-Newton direction d = −H∇ from the two-loop recursion over the last `memory` pairs
/// (s, u) = (y⁺ − y, ∇⁺ − ∇), with H₀ = γI, γ = ⟨s, u⟩/‖u‖² of the newest accepted pair, then a
/// backtracking Armijo step from t = 1. Each instance keeps its own pairs: a pair whose
/// curvature ⟨s, u⟩ ≤ 10⁻¹⁰‖s‖‖u‖ is stored with weight 0, so it drops out of that instance's
/// recursion (this keeps H positive definite on nonconvex problems), and an instance whose
/// direction is not a descent direction takes −∇ instead.
///
/// ## Requires
/// [`Problem::objective`] and [`Problem::domain_gradient`] of f(π_Y(y); x) over free y.
///
/// ## Optimality residual
/// ‖∇_y f(π_Y(y); x)‖ per instance ([`Problem::residual`]).
pub struct Lbfgs<'a> {
    problem: &'a dyn Problem,
    memory: usize,
    search: Backtracking,
}

/// The state of [`Lbfgs`].
#[derive(Debug, Clone)]
pub struct LbfgsState {
    y: Tensor,
    f: Tensor,
    grad: Tensor,
    /// (s, u, ρ = 1/⟨s, u⟩ or 0) per stored pair, oldest first; ρ is `(n, 1)`.
    pairs: VecDeque<(Tensor, Tensor, Tensor)>,
    gamma: Tensor,
}

impl<'a> Lbfgs<'a> {
    /// L-BFGS with `memory` ≥ 1 pairs (10 is the usual choice).
    pub fn new(problem: &'a dyn Problem, memory: usize) -> Result<Self> {
        if memory == 0 {
            return Err(Error::invalid("l-bfgs memory must be at least 1"));
        }
        Ok(Lbfgs {
            problem,
            memory,
            search: Backtracking {
                initial: 1.0,
                shrink: 0.5,
                c: 1e-4,
            },
        })
    }

    fn f(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        self.problem.objective(&self.problem.to_domain(y)?, x)
    }

    /// H∇ by the two-loop recursion.
    fn apply_inverse_hessian(&self, s: &LbfgsState) -> Result<Tensor> {
        let mut q = s.grad.clone();
        let mut alphas = Vec::with_capacity(s.pairs.len());
        for (sv, u, rho) in s.pairs.iter().rev() {
            let a = rho.mul(&sv.mul(&q)?.sum_keepdim(1)?)?;
            q = q.sub(&u.broadcast_mul(&a)?)?;
            alphas.push(a);
        }
        let mut r = q.broadcast_mul(&s.gamma)?;
        for ((sv, u, rho), a) in s.pairs.iter().zip(alphas.iter().rev()) {
            let b = rho.mul(&u.mul(&r)?.sum_keepdim(1)?)?;
            r = r.add(&sv.broadcast_mul(&a.sub(&b)?)?)?;
        }
        Ok(r)
    }
}

impl Solver for Lbfgs<'_> {
    type State = LbfgsState;

    fn name(&self) -> &'static str {
        "lbfgs"
    }

    fn init(&self, y0: &Tensor, x: &Tensor) -> Result<LbfgsState> {
        let n = y0.dim(0)?;
        Ok(LbfgsState {
            y: y0.clone(),
            f: self.f(y0, x)?,
            grad: self.problem.domain_gradient(y0, x)?,
            pairs: VecDeque::with_capacity(self.memory),
            gamma: Tensor::ones((n, 1), y0.dtype(), y0.device())?,
        })
    }

    fn step(&self, mut s: LbfgsState, x: &Tensor) -> Result<LbfgsState> {
        let quasi_newton = self.apply_inverse_hessian(&s)?.neg()?;
        let slope = quasi_newton.mul(&s.grad)?.sum(1)?;
        // Not a descent direction (rounding, or a line search that stalled): steepest descent.
        let descent = slope.lt(0.0)?.unsqueeze(1)?.broadcast_as(s.y.shape())?;
        let d = descent.where_cond(&quasi_newton, &s.grad.neg()?)?;
        let slope = d.mul(&s.grad)?.sum(1)?;
        let y = self
            .search
            .run(&s.y, &d, &s.f, &slope, |cand| self.f(cand, x))?;
        let grad = self.problem.domain_gradient(&y, x)?;
        let sv = y.sub(&s.y)?;
        let u = grad.sub(&s.grad)?;
        let su = sv.mul(&u)?.sum_keepdim(1)?;
        let uu = u.sqr()?.sum_keepdim(1)?;
        let ss = sv.sqr()?.sum_keepdim(1)?;
        let accepted = su.gt(&ss.mul(&uu)?.sqrt()?.affine(1e-10, 0.0)?)?;
        let zero = su.zeros_like()?;
        let safe_su = accepted.where_cond(&su, &su.ones_like()?)?;
        let rho = accepted.where_cond(&safe_su.recip()?, &zero)?;
        let safe_uu = accepted.where_cond(&uu, &uu.ones_like()?)?;
        s.gamma = accepted.where_cond(&safe_su.div(&safe_uu)?, &s.gamma)?;
        if s.pairs.len() == self.memory {
            s.pairs.pop_front();
        }
        s.pairs.push_back((sv, u, rho));
        Ok(LbfgsState {
            f: self.f(&y, x)?,
            y,
            grad,
            pairs: s.pairs,
            gamma: s.gamma,
        })
    }

    fn iterate<'s>(&self, s: &'s LbfgsState) -> &'s Tensor {
        &s.y
    }

    fn detach(&self, s: LbfgsState) -> LbfgsState {
        LbfgsState {
            y: s.y.detach(),
            f: s.f.detach(),
            grad: s.grad.detach(),
            pairs: s
                .pairs
                .into_iter()
                .map(|(a, b, c)| (a.detach(), b.detach(), c.detach()))
                .collect(),
            gamma: s.gamma.detach(),
        }
    }

    fn value(&self, s: &LbfgsState, _x: &Tensor) -> Result<Tensor> {
        Ok(s.f.clone())
    }

    fn residual(&self, s: &LbfgsState, x: &Tensor) -> Result<Tensor> {
        self.problem.residual(&s.y, x)
    }
}
