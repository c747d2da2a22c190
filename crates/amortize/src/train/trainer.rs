//! The training loop: θ ← Adam(θ, ∇_θ L) over batches of contexts (tutorial eq. 10–11).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{Checkpoint, CheckpointMeta, CHECKPOINT_FORMAT_VERSION};
use super::observer::{Observer, Record};
use crate::loss::Loss;
use crate::model::Model;
use crate::optim::{Adam, Schedule};
use crate::problem::{Problem, ProblemConfig};
use crate::{Error, Result};

/// Where training contexts come from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum DataConfig {
    /// A fresh batch x ~ p(x) every step (default; the expectation in eq. 10–11 exactly).
    #[default]
    Fresh,
    /// A fixed training set of `size` contexts drawn once (labels computed once and cached),
    /// cycled through in shuffled batches.
    Fixed {
        /// Number of training contexts.
        size: usize,
    },
}

/// Settings of a training run; every field has a documented default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Number of parameter updates (default 5000).
    pub steps: usize,
    /// Contexts per step (default 256).
    pub batch_size: usize,
    /// Base learning rate of Adam (default 1e-3).
    pub learning_rate: f64,
    /// Learning-rate schedule (default constant).
    pub schedule: Schedule,
    /// Adam's moment settings (weight decay is always 0).
    pub adam: Adam,
    /// Clip the global gradient norm to this value (default none).
    pub clip_grad_norm: Option<f64>,
    /// The loss (default objective).
    pub loss: Loss,
    /// Training data (default fresh samples every step).
    pub data: DataConfig,
    /// Evaluate on the held-out set every this many steps (default 250; 0 = only at the end).
    pub eval_every: usize,
    /// Size of the held-out set (default 1024).
    pub eval_size: usize,
    /// Write a checkpoint every this many steps (default 0 = only at the end).
    pub checkpoint_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 5000,
            batch_size: 256,
            learning_rate: 1e-3,
            schedule: Schedule::Constant,
            adam: Adam::default(),
            clip_grad_norm: None,
            loss: Loss::Objective,
            data: DataConfig::Fresh,
            eval_every: 250,
            eval_size: 1024,
            checkpoint_every: 0,
        }
    }
}

impl TrainConfig {
    /// Checks the settings, naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::invalid(format!("train: {m}")));
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad("learning_rate must be finite and > 0");
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return bad("clip_grad_norm must be finite and > 0");
            }
        }
        if let DataConfig::Fixed { size } = self.data {
            if size == 0 {
                return bad("data.size must be at least 1");
            }
        }
        if self.eval_size == 0 {
            return bad("eval_size must be at least 1");
        }
        Ok(())
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// Updates taken.
    pub steps: usize,
    /// Wall-clock seconds of the loop (evaluation included).
    pub seconds: f64,
    /// Last training loss.
    pub final_loss: f64,
    /// Mean held-out objective at the end.
    pub final_eval_objective: f64,
}

/// Runs training. Build it with [`Trainer::new`], add observers, then [`Trainer::run`].
pub struct Trainer<'a> {
    problem: &'a dyn Problem,
    problem_config: ProblemConfig,
    model: &'a dyn Model,
    config: TrainConfig,
    seed: u64,
    device: Device,
    observers: Vec<Box<dyn Observer + 'a>>,
    checkpoint_dir: Option<PathBuf>,
    on_step: Option<Box<dyn FnMut(usize, &Record) + 'a>>,
}

impl<'a> Trainer<'a> {
    /// A trainer of `model` on `problem` (whose configuration is recorded in checkpoints).
    pub fn new(
        problem: &'a dyn Problem,
        problem_config: ProblemConfig,
        model: &'a dyn Model,
        config: TrainConfig,
        seed: u64,
    ) -> Result<Self> {
        config.validate()?;
        let device = model
            .params()
            .vars()
            .next()
            .map(|v| v.device().clone())
            .unwrap_or(Device::Cpu);
        Ok(Trainer {
            problem,
            problem_config,
            model,
            config,
            seed,
            device,
            observers: Vec::new(),
            checkpoint_dir: None,
            on_step: None,
        })
    }

    /// Adds an observer of every training and evaluation record.
    pub fn observe(mut self, observer: impl Observer + 'a) -> Self {
        self.observers.push(Box::new(observer));
        self
    }

    /// Writes checkpoints into `dir` (at the end, every `checkpoint_every` steps, and the last
    /// good parameters when training stops on a non-finite value).
    pub fn checkpoint_to(mut self, dir: impl Into<PathBuf>) -> Self {
        self.checkpoint_dir = Some(dir.into());
        self
    }

    /// A callback after every step (progress bars, figures of predictions along training).
    pub fn on_step(mut self, f: impl FnMut(usize, &Record) + 'a) -> Self {
        self.on_step = Some(Box::new(f));
        self
    }

    fn meta(&self, step: usize) -> CheckpointMeta {
        CheckpointMeta {
            format_version: CHECKPOINT_FORMAT_VERSION,
            problem: self.problem_config.clone(),
            context_dim: self.problem.context_dim(),
            solution_dim: self.problem.solution_dim(),
            model: self.model.config(),
            step,
            seed: self.seed,
        }
    }

    fn save(&self, step: usize) -> Result<()> {
        if let Some(dir) = &self.checkpoint_dir {
            Checkpoint::save(dir, self.model, &self.meta(step))?;
        }
        Ok(())
    }

    fn emit(&mut self, record: &Record) -> Result<()> {
        for o in &mut self.observers {
            o.observe(record)?;
        }
        Ok(())
    }

    /// Mean objective of the model on held-out contexts.
    fn evaluate(&self, x: &Tensor) -> Result<f64> {
        let pred = self.model.forward(x, self.problem)?;
        Ok(self
            .problem
            .objective(&pred.y, x)?
            .mean_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar()?)
    }

    /// Trains for `config.steps` updates. Stops with [`Error::NonFinite`] (after saving the last
    /// good parameters) if the loss or a gradient becomes NaN or infinite.
    pub fn run(mut self) -> Result<TrainSummary> {
        let cfg = self.config.clone();
        let problem = self.problem;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let eval_x = problem.sample_contexts(cfg.eval_size, &mut rng, &self.device)?;
        let fixed = match cfg.data {
            DataConfig::Fixed { size } => {
                let x = problem.sample_contexts(size, &mut rng, &self.device)?;
                let labels = if cfg.loss.needs_labels() {
                    Some(exact_labels(problem, &x)?)
                } else {
                    None
                };
                Some((x, labels))
            }
            DataConfig::Fresh => None,
        };
        let vars: Vec<candle_core::Var> = self.model.params().vars().cloned().collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let refs: Vec<&Tensor> = tensors.iter().collect();
        let mut adam_state = cfg.adam.init(&refs)?;
        let start = Instant::now();
        let mut last_loss = f64::NAN;
        let mut order: Vec<usize> = Vec::new();
        let mut cursor = usize::MAX;
        for step in 0..cfg.steps {
            let (x, labels) = match &fixed {
                None => {
                    let x = problem.sample_contexts(cfg.batch_size, &mut rng, &self.device)?;
                    let labels = if cfg.loss.needs_labels() {
                        Some(exact_labels(problem, &x)?)
                    } else {
                        None
                    };
                    (x, labels)
                }
                Some((fx, fl)) => {
                    let size = fx.dim(0)?;
                    let b = cfg.batch_size.min(size);
                    if cursor.saturating_add(b) > size {
                        order = (0..size).collect();
                        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
                        cursor = 0;
                    }
                    let idx: Vec<u32> = order[cursor..cursor + b].iter().map(|&i| i as u32).collect();
                    cursor += b;
                    let idx = Tensor::from_vec(idx, b, &self.device)?;
                    let labels = match fl {
                        Some(l) => Some(l.index_select(&idx, 0)?),
                        None => None,
                    };
                    (fx.index_select(&idx, 0)?, labels)
                }
            };
            let pred = self.model.forward(&x, problem)?;
            let loss = cfg.loss.value(&pred, &x, labels.as_ref(), problem)?;
            let loss_value: f64 = loss.to_dtype(candle_core::DType::F64)?.to_scalar()?;
            let grads_store = loss.backward()?;
            let mut grads = Vec::with_capacity(vars.len());
            let mut sq = 0f64;
            for v in &vars {
                let g = match grads_store.get(v.as_tensor()) {
                    Some(g) => g.detach(),
                    None => v.as_tensor().zeros_like()?,
                };
                sq += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?;
                grads.push(g);
            }
            let grad_norm = sq.sqrt();
            if !loss_value.is_finite() || !grad_norm.is_finite() {
                self.save(step)?;
                let what = if loss_value.is_finite() {
                    "gradient norm"
                } else {
                    "loss"
                };
                return Err(Error::NonFinite {
                    what: format!(
                        "{what} (training stopped; the last good parameters, after {step} steps, are kept)"
                    ),
                    step: step + 1,
                });
            }
            if let Some(max) = cfg.clip_grad_norm {
                if grad_norm > max {
                    let s = max / grad_norm;
                    for g in &mut grads {
                        *g = g.affine(s, 0.0)?;
                    }
                }
            }
            let lr = cfg.schedule.rate(cfg.learning_rate, step, cfg.steps);
            let current: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let current_refs: Vec<&Tensor> = current.iter().collect();
            let new = cfg.adam.update(lr, &current_refs, &grads, &mut adam_state)?;
            for (v, t) in vars.iter().zip(new) {
                v.set(&t.detach())?;
            }
            last_loss = loss_value;
            let done = step + 1;
            let record = Record {
                phase: "train",
                step: done,
                elapsed: start.elapsed().as_secs_f64(),
                values: vec![("loss", loss_value), ("grad_norm", grad_norm), ("lr", lr)],
            };
            self.emit(&record)?;
            if let Some(cb) = &mut self.on_step {
                cb(done, &record);
            }
            let eval_now = cfg.eval_every > 0 && done % cfg.eval_every == 0;
            if eval_now && done < cfg.steps {
                let obj = self.evaluate(&eval_x)?;
                let rec = Record {
                    phase: "eval",
                    step: done,
                    elapsed: start.elapsed().as_secs_f64(),
                    values: vec![("objective", obj)],
                };
                self.emit(&rec)?;
            }
            if cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0 {
                self.save(done)?;
            }
        }
        let final_eval = self.evaluate(&eval_x)?;
        let rec = Record {
            phase: "eval",
            step: cfg.steps,
            elapsed: start.elapsed().as_secs_f64(),
            values: vec![("objective", final_eval)],
        };
        self.emit(&rec)?;
        self.save(cfg.steps)?;
        Ok(TrainSummary {
            steps: cfg.steps,
            seconds: start.elapsed().as_secs_f64(),
            final_loss: last_loss,
            final_eval_objective: final_eval,
        })
    }
}

/// Labels y*(x) from the problem's exact solver, or a clear error when it has none.
pub fn exact_labels(problem: &dyn Problem, x: &Tensor) -> Result<Tensor> {
    problem.solve_exact(x)?.ok_or_else(|| {
        Error::invalid(format!(
            "problem '{}' has no exact solver, so the regression loss cannot be used",
            problem.name()
        ))
    })
}
