//! # amortize: amortized optimization on candle
//!
//! Many applications solve the same kind of optimization problem again and again, each time
//! with a different context x:
//!
//! ```text
//!     y*(x) ∈ argmin_{y ∈ Y} f(y; x),      x ~ p(x)            (tutorial eq. 1)
//! ```
//!
//! Amortized optimization learns a model ŷθ(x) ≈ y*(x) once, so that a new instance is solved
//! by one forward pass instead of an iterative solver (Amos, *Tutorial on amortized
//! optimization*, Definition 1). A method is the tuple A = (f, Y, X, p(x), ŷθ, L), and each
//! letter is a module here:
//!
//! | letter | module | |
//! |---|---|---|
//! | f, Y, X, p(x) | [`problem`] | problem families: objective, domain map, context sampler, exact solver, residual |
//! | ŷθ | [`model`] | fully-amortized nets (MLP) returning a [`model::Prediction`] |
//! | L | [`loss`] | regression (eq. 10), objective (eq. 11) and their mix |
//! | learning θ | [`train`] | Adam, schedules, clipping, observers, checkpoints |
//! | §8.3 | [`eval`] | amortization gap and speed at equal quality |
//!
//! Notation throughout: x a context (`(n, context_dim)` tensor), y a solution
//! (`(n, solution_dim)`), θ the model parameters, y*(x) the true solution.
//!
//! ## Quick start
//! ```
//! use amortize::prelude::*;
//! use rand::SeedableRng;
//!
//! let config = ProblemConfig::Quadratic(QuadraticConfig::default());
//! let problem = config.build()?;
//! let mut rng = rand::rngs::StdRng::seed_from_u64(0);
//! let model = ModelConfig::default().build(problem.as_ref(), &mut rng, &Device::Cpu)?;
//! let train = TrainConfig { steps: 200, eval_every: 0, eval_size: 64, ..Default::default() };
//! let summary = Trainer::new(problem.as_ref(), config, model.as_ref(), train, 0)?.run()?;
//! assert!(summary.final_eval_objective.is_finite());
//! # Ok::<(), amortize::Error>(())
//! ```
//!
//! Second-order gradients (needed to differentiate through solver steps) must be switched on
//! once at start-up: see [`autodiff`].

pub mod autodiff;
mod error;
pub mod eval;
pub mod linalg;
pub mod loss;
pub mod model;
pub mod ops;
pub mod optim;
pub mod problem;
pub mod projection;
pub mod solver;
pub mod testing;
pub mod train;

pub use error::{Error, Result};

/// The names most programs need.
pub mod prelude {
    pub use crate::eval::{amortization_gap, speed_at_equal_quality, GapReport, SpeedConfig};
    pub use crate::loss::{IterateWeights, Loss};
    pub use crate::model::{Mlp, MlpConfig, Model, ModelConfig, Prediction};
    pub use crate::optim::{Adam, Schedule};
    pub use crate::problem::{
        Problem, ProblemConfig, Quadratic, QuadraticConfig, Sphere, SphereConfig, Toy1d,
        Toy1dConfig,
    };
    pub use crate::train::{Checkpoint, DataConfig, TrainConfig, Trainer};
    pub use crate::{Error, Result};
    pub use candle_core::{DType, Device, Tensor};
}
