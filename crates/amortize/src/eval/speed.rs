//! Speed at equal quality (tutorial §8.3): how long classical solvers, started from scratch on
//! the same batch, need to reach the amortized model's mean objective.
//!
//! Each baseline runs over free y ∈ Rⁿ on f(π_Y(y); x) (tutorial eq. 83) from random starts.
//! With several starts per instance (best-of-k, run as one batch of k·n problems) the
//! objective of an instance is the best over its starts, which is what a fair from-scratch
//! solver on a non-convex family would do. Only the solver's own iterations are timed; the
//! monitoring of the mean objective is not.

use std::time::Instant;

use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::problem::Problem;
use crate::solver::{AdamSolver, GradientDescent, ProximalGradient, Solver, StepRule};
use crate::{Error, Result};

/// The update rule of a baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum BaselineMethod {
    /// Adam with learning rate `lr`.
    Adam {
        /// Learning rate.
        lr: f64,
    },
    /// Gradient descent y ← y − lr ∇.
    Gd {
        /// Step size.
        lr: f64,
    },
    /// FISTA (no restart) from y = 0 with step 1/L, for the lasso family.
    Fista,
    /// ISTA from y = 0 with step 1/L, for the lasso family.
    Ista,
}

/// One from-scratch baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// Update rule.
    pub method: BaselineMethod,
    /// Random starts per instance (best of them counts).
    pub starts: usize,
}

impl Baseline {
    /// A short label such as `adam(lr=0.005) best of 8`.
    pub fn label(&self) -> String {
        let m = match self.method {
            BaselineMethod::Adam { lr } => format!("adam(lr={lr})"),
            BaselineMethod::Gd { lr } => format!("gd(lr={lr})"),
            BaselineMethod::Fista => "fista".into(),
            BaselineMethod::Ista => "ista".into(),
        };
        if self.starts == 1 {
            m
        } else {
            format!("{m} best of {}", self.starts)
        }
    }
}

/// Settings of the speed comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpeedConfig {
    /// Baselines to run (default: Adam lr 5e-3 from 1 and from 8 starts, GD lr 0.1 from 8).
    pub baselines: Vec<Baseline>,
    /// Iteration budget of each baseline (default 1000).
    pub max_iters: usize,
    /// Timed repetitions of the batched prediction; the median counts (default 21).
    pub prediction_repeats: usize,
    /// Seed of the random starts (default 0).
    pub seed: u64,
}

impl Default for SpeedConfig {
    fn default() -> Self {
        SpeedConfig {
            baselines: vec![
                Baseline {
                    method: BaselineMethod::Adam { lr: 5e-3 },
                    starts: 1,
                },
                Baseline {
                    method: BaselineMethod::Adam { lr: 5e-3 },
                    starts: 8,
                },
                Baseline {
                    method: BaselineMethod::Gd { lr: 0.1 },
                    starts: 8,
                },
            ],
            max_iters: 1000,
            prediction_repeats: 21,
            seed: 0,
        }
    }
}

/// Mean objective along a baseline's iterations.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Curve {
    /// Iteration numbers (0 = the starts).
    pub iters: Vec<usize>,
    /// Cumulative solver seconds at each iteration.
    pub seconds: Vec<f64>,
    /// Mean (over instances) of the best (over starts) objective.
    pub mean_objective: Vec<f64>,
}

/// One baseline's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineResult {
    /// Label of the baseline.
    pub name: String,
    /// Its settings.
    pub baseline: Baseline,
    /// First iteration whose mean objective is at most the amortized one (None: never within
    /// the budget).
    pub iters_to_match: Option<usize>,
    /// Solver seconds to that iteration.
    pub seconds_to_match: Option<f64>,
    /// Mean objective at the end of the budget.
    pub final_mean_objective: f64,
    /// Seconds of the whole budget.
    pub total_seconds: f64,
    /// seconds_to_match / prediction seconds: how many times faster the model is at equal
    /// quality. When never matched, the lower bound total_seconds / prediction seconds.
    pub speed_ratio: f64,
    /// Whether `speed_ratio` is only a lower bound (the baseline never matched).
    pub ratio_is_lower_bound: bool,
    /// The curve for the figures.
    pub curve: Curve,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct SpeedReport {
    /// Number of instances in the batch.
    pub batch: usize,
    /// Median seconds of one batched prediction.
    pub prediction_seconds: f64,
    /// Mean objective of the amortized predictions (the level to match).
    pub amortized_mean_objective: f64,
    /// One entry per baseline.
    pub baselines: Vec<BaselineResult>,
}

/// Median wall-clock seconds of `repeats` calls of `f` (after one warm-up call).
pub fn time_median(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(repeats.max(1));
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

fn mean_best_of(problem: &dyn Problem, y: &Tensor, x_rep: &Tensor, starts: usize) -> Result<f64> {
    let n = x_rep.dim(0)? / starts;
    let f = problem.objective(&problem.to_domain(y)?, x_rep)?;
    let best = f.reshape((starts, n))?.min(0)?;
    Ok(best.mean_all()?.to_dtype(DType::F64)?.to_scalar()?)
}

/// What one baseline run produced.
struct BaselineRun {
    curve: Curve,
    matched: Option<(usize, f64)>,
    elapsed: f64,
    level: f64,
}

/// What every baseline of one comparison shares.
struct BaselineSetup<'a> {
    problem: &'a dyn Problem,
    /// The contexts repeated once per start.
    x_rep: Tensor,
    starts: usize,
    /// The amortized mean objective to reach.
    amortized: f64,
    max_iters: usize,
}

impl BaselineSetup<'_> {
    /// Runs `solver` from `y` for `max_iters` steps, timing only the steps, and records the
    /// mean best-of-`starts` objective after each.
    fn run<S: Solver>(&self, solver: &S, y: Tensor) -> Result<BaselineRun> {
        let (problem, x_rep, starts) = (self.problem, &self.x_rep, self.starts);
        let mut state = solver.init(&y, x_rep)?;
        let mut curve = Curve::default();
        let mut elapsed = 0.0;
        let mut matched: Option<(usize, f64)> = None;
        let mut level = mean_best_of(problem, solver.iterate(&state), x_rep, starts)?;
        curve.iters.push(0);
        curve.seconds.push(0.0);
        curve.mean_objective.push(level);
        if level <= self.amortized {
            matched = Some((0, 0.0));
        }
        for it in 1..=self.max_iters {
            let t = Instant::now();
            state = solver.detach(solver.step(state, x_rep)?);
            elapsed += t.elapsed().as_secs_f64();
            level = mean_best_of(problem, solver.iterate(&state), x_rep, starts)?;
            curve.iters.push(it);
            curve.seconds.push(elapsed);
            curve.mean_objective.push(level);
            if matched.is_none() && level <= self.amortized {
                matched = Some((it, elapsed));
            }
        }
        Ok(BaselineRun {
            curve,
            matched,
            elapsed,
            level,
        })
    }
}

/// Times `predict` on contexts `x` and runs every baseline of `config` on the same contexts.
pub fn speed_at_equal_quality(
    problem: &dyn Problem,
    x: &Tensor,
    predict: &dyn Fn(&Tensor) -> Result<Tensor>,
    config: &SpeedConfig,
) -> Result<SpeedReport> {
    let n = x.dim(0)?;
    let y_pred = predict(x)?;
    let amortized: f64 = problem
        .objective(&y_pred, x)?
        .mean_all()?
        .to_dtype(DType::F64)?
        .to_scalar()?;
    let prediction_seconds = time_median(config.prediction_repeats, || predict(x).map(|_| ()))?;
    let mut baselines = Vec::new();
    for (bi, b) in config.baselines.iter().enumerate() {
        if b.starts == 0 {
            return Err(Error::invalid("speed: a baseline needs at least one start"));
        }
        let mut rng = StdRng::seed_from_u64(config.seed.wrapping_add(bi as u64));
        let dim = problem.solution_dim();
        let rows = n * b.starts;
        let y0: Vec<f64> = (0..rows * dim)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let y = Tensor::from_vec(y0, (rows, dim), x.device())?.to_dtype(x.dtype())?;
        let setup = BaselineSetup {
            problem,
            x_rep: Tensor::cat(&vec![x.clone(); b.starts], 0)?,
            starts: b.starts,
            amortized,
            max_iters: config.max_iters,
        };
        let run = match b.method {
            BaselineMethod::Adam { lr } => setup.run(&AdamSolver::new(problem, lr), y)?,
            BaselineMethod::Gd { lr } => {
                setup.run(&GradientDescent::new(problem, StepRule::Fixed { lr }), y)?
            }
            BaselineMethod::Fista | BaselineMethod::Ista => {
                let lasso = problem.as_lasso().ok_or_else(|| {
                    Error::invalid(format!(
                        "speed: the {} baseline needs the lasso family, not '{}'",
                        b.label(),
                        problem.name()
                    ))
                })?;
                let (smooth, prox, step) =
                    (lasso.least_squares(), lasso.prox(), 1.0 / lasso.lipschitz());
                // Proximal methods start from the sparse code 0, as is standard.
                let zero = y.zeros_like()?;
                if b.method == BaselineMethod::Fista {
                    let fista = ProximalGradient::fista(smooth, prox, step)?.with_restart(false);
                    setup.run(&fista, zero)?
                } else {
                    setup.run(&ProximalGradient::ista(smooth, prox, step)?, zero)?
                }
            }
        };
        let BaselineRun {
            curve,
            matched,
            elapsed,
            level,
        } = run;
        let (ratio, lower) = match matched {
            Some((_, s)) => (s / prediction_seconds, false),
            None => (elapsed / prediction_seconds, true),
        };
        baselines.push(BaselineResult {
            name: b.label(),
            baseline: b.clone(),
            iters_to_match: matched.map(|m| m.0),
            seconds_to_match: matched.map(|m| m.1),
            final_mean_objective: level,
            total_seconds: elapsed,
            speed_ratio: ratio,
            ratio_is_lower_bound: lower,
            curve,
        });
    }
    Ok(SpeedReport {
        batch: n,
        prediction_seconds,
        amortized_mean_objective: amortized,
        baselines,
    })
}
