//! The solvers of a [`Problem`] by name, for the CLI, benchmarks and table-driven tests.

use candle_core::Tensor;

use super::{
    solve, AdamSolver, CrossEntropyMethod, GradientDescent, Lbfgs, Newton, ProxOperator,
    ProximalGradient, Settings, Solution, StepRule,
};
use crate::problem::Problem;
use crate::{Error, Result};

/// Every solver [`solve_named`] knows, in the order `amortize list` shows them.
pub const SOLVER_NAMES: [&str; 9] = [
    "gd",
    "gd-armijo",
    "adam",
    "lbfgs",
    "newton",
    "ista",
    "fista",
    "cem",
    "dcem",
];

/// The knobs of the named solvers (each uses the ones that apply to it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SolverOptions {
    /// Step size (gd, adam, ista, fista), first trial step (gd-armijo), Newton's fallback
    /// gradient step.
    pub lr: f64,
    /// Weight α of the α‖y‖₁ term that ista and fista add.
    pub l1: f64,
    /// L-BFGS memory.
    pub memory: usize,
    /// CEM samples per iteration.
    pub samples: usize,
    /// CEM elites.
    pub elites: usize,
    /// DCEM's soft top-k temperature.
    pub temperature: f64,
    /// CEM's sampling seed.
    pub seed: u64,
}

impl Default for SolverOptions {
    fn default() -> Self {
        SolverOptions {
            lr: 0.1,
            l1: 0.1,
            memory: 10,
            samples: 128,
            elites: 12,
            temperature: 0.01,
            seed: 0,
        }
    }
}

/// Whether the named solver's iterates are points of the domain (ista, fista: constraints
/// live in the prox) rather than free y mapped by [`Problem::to_domain`].
pub fn iterates_in_domain(name: &str) -> bool {
    matches!(name, "ista" | "fista")
}

/// Runs the solver called `name` on `problem` from `y0`.
pub fn solve_named(
    name: &str,
    problem: &dyn Problem,
    y0: &Tensor,
    x: &Tensor,
    settings: &Settings,
    opts: &SolverOptions,
) -> Result<Solution> {
    let lr = opts.lr;
    let l1 = ProxOperator::L1 { alpha: opts.l1 };
    let none = |_: usize, _: f64| {};
    match name {
        "gd" => solve(
            &GradientDescent::new(problem, StepRule::Fixed { lr }),
            y0,
            x,
            settings,
            none,
        ),
        "gd-armijo" => {
            let rule = StepRule::Armijo {
                initial: lr,
                shrink: 0.5,
                c: 1e-4,
            };
            solve(&GradientDescent::new(problem, rule), y0, x, settings, none)
        }
        "adam" => solve(&AdamSolver::new(problem, lr), y0, x, settings, none),
        "lbfgs" => solve(&Lbfgs::new(problem, opts.memory)?, y0, x, settings, none),
        "newton" => solve(&Newton::new(problem, 0.0, lr)?, y0, x, settings, none),
        "ista" => solve(
            &ProximalGradient::ista(problem, l1, lr)?,
            y0,
            x,
            settings,
            none,
        ),
        "fista" => solve(
            &ProximalGradient::fista(problem, l1, lr)?,
            y0,
            x,
            settings,
            none,
        ),
        "cem" | "dcem" => {
            let cem =
                CrossEntropyMethod::new(problem, opts.samples, opts.elites, 0.1, 1.0, opts.seed)?;
            if name == "dcem" {
                solve(&cem.soft(opts.temperature)?, y0, x, settings, none)
            } else {
                solve(&cem, y0, x, settings, none)
            }
        }
        other => Err(Error::invalid(format!(
            "unknown solver '{other}' (known: {})",
            SOLVER_NAMES.join(", ")
        ))),
    }
}
