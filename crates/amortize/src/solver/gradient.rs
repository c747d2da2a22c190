//! Gradient methods on f(π_Y(y); x) over free y ∈ Rⁿ (tutorial eq. 83): gradient descent with
//! a fixed step or Armijo backtracking, and Adam (the same update rule that trains models).

use candle_core::{DType, Tensor};

use super::Solver;
use crate::optim::{Adam, AdamState};
use crate::problem::Problem;
use crate::Result;

/// The step of [`GradientDescent`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepRule {
    /// y ← y − lr ∇.
    Fixed {
        /// Step size.
        lr: f64,
    },
    /// Per instance, the largest lr = initial · shrinkᵏ (k < 30) with
    /// F(y − lr ∇) ≤ F(y) − c · lr ‖∇‖² (Armijo's sufficient decrease); rows with none keep y.
    /// Like every line search on values of F, it stalls once the predicted decrease drops below
    /// F's rounding, around ‖∇‖ ≈ √(ε|F|) (about 1e-8 in f64): ask for tolerances above that.
    Armijo {
        /// First trial step.
        initial: f64,
        /// Factor in (0, 1) applied after each rejection.
        shrink: f64,
        /// Sufficient-decrease constant in (0, 1).
        c: f64,
    },
}

/// Batched backtracking line search: per instance, the largest t = initial · shrinkᵏ (k < 30)
/// with F(y + t d) ≤ F(y) + c t ⟨∇F(y), d⟩ (Armijo's sufficient decrease, Nocedal & Wright
/// §3.1); rows where no trial passes keep y.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Backtracking {
    pub initial: f64,
    pub shrink: f64,
    pub c: f64,
}

impl Backtracking {
    /// The accepted points `(n, d)` for directions `d` with slopes ⟨∇F, d⟩ `(n,)`.
    pub fn run(
        &self,
        y: &Tensor,
        d: &Tensor,
        f0: &Tensor,
        slope: &Tensor,
        f: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let n = y.dim(0)?;
        let mut t = Tensor::full(self.initial, n, y.device())?.to_dtype(y.dtype())?;
        let mut accepted = y.clone();
        let mut done = Tensor::zeros(n, y.dtype(), y.device())?;
        for _ in 0..30 {
            let cand = y.add(&d.broadcast_mul(&t.unsqueeze(1)?)?)?;
            let fc = f(&cand)?;
            let bound = f0.add(&t.mul(slope)?.affine(self.c, 0.0)?)?;
            // Newly accepted rows: decrease holds and not yet accepted.
            let ok = fc.le(&bound)?.to_dtype(y.dtype())?;
            let new = ok.mul(&done.affine(-1.0, 1.0)?)?;
            let mask = new.unsqueeze(1)?.broadcast_as(y.shape())?;
            accepted = mask.ne(0.0)?.where_cond(&cand, &accepted)?;
            done = done.add(&new)?;
            if done.min(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()? >= 1.0 {
                break;
            }
            t = t.affine(self.shrink, 0.0)?;
        }
        Ok(accepted)
    }
}

/// # Gradient descent
/// y ← y − lr ∇_y f(π_Y(y); x), batched, with a fixed or Armijo step.
///
/// ## Requires
/// [`Problem::objective`] and [`Problem::domain_gradient`] (autodiff by default).
///
/// ## Optimality residual
/// ‖∇_y f(π_Y(y); x)‖ per instance ([`Problem::residual`]).
pub struct GradientDescent<'a> {
    problem: &'a dyn Problem,
    rule: StepRule,
}

impl<'a> GradientDescent<'a> {
    /// Gradient descent on `problem` with `rule`.
    pub fn new(problem: &'a dyn Problem, rule: StepRule) -> Self {
        GradientDescent { problem, rule }
    }

    fn f(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        self.problem.objective(&self.problem.to_domain(y)?, x)
    }
}

impl Solver for GradientDescent<'_> {
    type State = Tensor;

    fn name(&self) -> &'static str {
        match self.rule {
            StepRule::Fixed { .. } => "gd",
            StepRule::Armijo { .. } => "gd-armijo",
        }
    }

    fn init(&self, y0: &Tensor, _x: &Tensor) -> Result<Tensor> {
        Ok(y0.clone())
    }

    fn step(&self, y: Tensor, x: &Tensor) -> Result<Tensor> {
        let g = self.problem.domain_gradient(&y, x)?;
        match self.rule {
            StepRule::Fixed { lr } => Ok((&y - (g * lr)?)?),
            StepRule::Armijo { initial, shrink, c } => {
                let f0 = self.f(&y, x)?;
                let slope = g.sqr()?.sum(1)?.neg()?;
                let search = Backtracking { initial, shrink, c };
                search.run(&y, &g.neg()?, &f0, &slope, |cand| self.f(cand, x))
            }
        }
    }

    fn iterate<'s>(&self, y: &'s Tensor) -> &'s Tensor {
        y
    }

    fn detach(&self, y: Tensor) -> Tensor {
        y.detach()
    }

    fn value(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        self.f(y, x)
    }

    fn residual(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        self.problem.residual(y, x)
    }
}

/// # Adam
/// The update rule that trains models ([`crate::optim::Adam`]), applied to y with rate `lr`.
///
/// ## Optimality residual
/// ‖∇_y f(π_Y(y); x)‖ per instance.
pub struct AdamSolver<'a> {
    problem: &'a dyn Problem,
    adam: Adam,
    lr: f64,
}

impl<'a> AdamSolver<'a> {
    /// Adam with default moments and rate `lr` on `problem`.
    pub fn new(problem: &'a dyn Problem, lr: f64) -> Self {
        AdamSolver {
            problem,
            adam: Adam::default(),
            lr,
        }
    }
}

impl Solver for AdamSolver<'_> {
    type State = (Tensor, AdamState);

    fn name(&self) -> &'static str {
        "adam"
    }

    fn init(&self, y0: &Tensor, _x: &Tensor) -> Result<Self::State> {
        Ok((y0.clone(), self.adam.init(&[y0])?))
    }

    fn step(&self, (y, mut state): Self::State, x: &Tensor) -> Result<Self::State> {
        let g = self.problem.domain_gradient(&y, x)?;
        let y = self
            .adam
            .update(self.lr, &[&y], &[g], &mut state)?
            .remove(0);
        Ok((y, state))
    }

    fn iterate<'s>(&self, state: &'s Self::State) -> &'s Tensor {
        &state.0
    }

    fn detach(&self, (y, mut state): Self::State) -> Self::State {
        state.m = state.m.iter().map(Tensor::detach).collect();
        state.v = state.v.iter().map(Tensor::detach).collect();
        (y.detach(), state)
    }

    fn value(&self, state: &Self::State, x: &Tensor) -> Result<Tensor> {
        self.problem
            .objective(&self.problem.to_domain(&state.0)?, x)
    }

    fn residual(&self, state: &Self::State, x: &Tensor) -> Result<Tensor> {
        self.problem.residual(&state.0, x)
    }
}
