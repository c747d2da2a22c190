//! The training loop: θ ← Adam(θ, ∇_θ L) over batches of contexts (tutorial eq. 10–11).
//!
//! Two paths compute the same update. The composite path builds the loss from candle tensor
//! ops and differentiates it with candle's autodiff; it works for every model, loss and
//! problem, and keeps second-order gradients available. The fused path
//! ([`crate::model::FusedMlp`]) runs when the model is a plain MLP with relu/tanh layers, the
//! loss is the objective, and the problem has a [`crate::problem::CpuObjective`]: it is a
//! hand-written forward/backward with no tensor allocation per step.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{Checkpoint, CheckpointMeta, CHECKPOINT_FORMAT_VERSION};
use super::observer::{Observer, Record};
use crate::loss::Loss;
use crate::model::{FusedMlp, Model};
use crate::optim::{Adam, AdamState, Schedule};
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
    /// A fresh batch every step together with the solutions that generated it
    /// ([`Problem::sample_with_solutions`], e.g. the sparse codes of sparse recovery): the
    /// regression loss then fits those instead of the exact minimisers, and needs no solver.
    Generated,
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
    /// Use the fused CPU path when it applies (default true; same updates, faster).
    pub fused: bool,
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
            fused: true,
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
    /// Whether the fused path ran.
    pub fused: bool,
}

type SnapshotFn<'a> = Box<dyn FnMut(usize, &dyn Model) + 'a>;
type StepFn<'a> = Box<dyn FnMut(usize, &Record) + 'a>;

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
    on_step: Option<StepFn<'a>>,
    snapshot: Option<(usize, SnapshotFn<'a>)>,
}

/// Draws training batches: fresh samples, or shuffled passes over a fixed set with cached labels.
struct Batches {
    fixed: Option<(Tensor, Option<Tensor>)>,
    order: Vec<usize>,
    cursor: usize,
}

impl Batches {
    fn new(
        problem: &dyn Problem,
        cfg: &TrainConfig,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Self> {
        let fixed = match cfg.data {
            DataConfig::Fixed { size } => {
                let x = problem.sample_contexts(size, rng, device)?;
                let labels = if cfg.loss.needs_labels() {
                    Some(exact_labels(problem, &x)?)
                } else {
                    None
                };
                Some((x, labels))
            }
            DataConfig::Fresh | DataConfig::Generated => None,
        };
        Ok(Batches {
            fixed,
            order: Vec::new(),
            cursor: usize::MAX,
        })
    }

    fn next(
        &mut self,
        problem: &dyn Problem,
        cfg: &TrainConfig,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<(Tensor, Option<Tensor>)> {
        if cfg.data == DataConfig::Generated {
            let (x, y) = problem
                .sample_with_solutions(cfg.batch_size, rng, device)?
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "train.data = generated needs a sampler that knows its solutions; \
                         problem '{}' has none",
                        problem.name()
                    ))
                })?;
            return Ok((x, Some(y)));
        }
        let Some((fx, fl)) = &self.fixed else {
            let x = problem.sample_contexts(cfg.batch_size, rng, device)?;
            let labels = if cfg.loss.needs_labels() {
                Some(exact_labels(problem, &x)?)
            } else {
                None
            };
            return Ok((x, labels));
        };
        let size = fx.dim(0)?;
        let b = cfg.batch_size.min(size);
        if self.cursor.saturating_add(b) > size {
            self.order = (0..size).collect();
            rand::seq::SliceRandom::shuffle(self.order.as_mut_slice(), rng);
            self.cursor = 0;
        }
        let idx: Vec<u32> = self.order[self.cursor..self.cursor + b]
            .iter()
            .map(|&i| i as u32)
            .collect();
        self.cursor += b;
        let idx = Tensor::from_vec(idx, b, device)?;
        let labels = match fl {
            Some(l) => Some(l.index_select(&idx, 0)?),
            None => None,
        };
        Ok((fx.index_select(&idx, 0)?, labels))
    }
}

/// The update machinery of one path.
enum Engine {
    Composite {
        vars: Vec<candle_core::Var>,
        state: AdamState,
    },
    Fused(Box<FusedMlp>),
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
            snapshot: None,
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

    /// A callback after every step with that step's record (progress bars).
    pub fn on_step(mut self, f: impl FnMut(usize, &Record) + 'a) -> Self {
        self.on_step = Some(Box::new(f));
        self
    }

    /// A callback every `every` steps with the model as it is then (figures of predictions
    /// along training).
    pub fn snapshot_every(mut self, every: usize, f: impl FnMut(usize, &dyn Model) + 'a) -> Self {
        self.snapshot = Some((every.max(1), Box::new(f)));
        self
    }

    /// Whether this run takes the fused path.
    pub fn uses_fused_path(&self) -> bool {
        self.config.fused
            && self.config.loss == Loss::Objective
            && self.device.is_cpu()
            && self.problem.cpu_objective().is_some()
            && self.model.as_mlp().is_some_and(|m| {
                FusedMlp::supports(m.mlp_config().activation)
                    && m.mlp_config().project_output
                    && m.layers().iter().all(|(w, _)| w.dtype() == DType::F32)
            })
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

    /// Makes the model's variables current (the fused path keeps its own copy of θ).
    fn sync(&self, engine: &Engine) -> Result<()> {
        if let (Engine::Fused(f), Some(mlp)) = (engine, self.model.as_mlp()) {
            f.write_to(mlp)?;
        }
        Ok(())
    }

    fn save(&self, engine: &Engine, step: usize) -> Result<()> {
        if let Some(dir) = &self.checkpoint_dir {
            self.sync(engine)?;
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
    fn evaluate(&self, engine: &Engine, x: &Tensor) -> Result<f64> {
        self.sync(engine)?;
        let pred = self.model.forward(x, self.problem)?;
        Ok(self
            .problem
            .objective(&pred.y, x)?
            .mean_all()?
            .to_dtype(DType::F64)?
            .to_scalar()?)
    }

    /// Trains for `config.steps` updates. Stops with [`Error::NonFinite`] (after saving the last
    /// good parameters) if the loss or a gradient becomes NaN or infinite.
    pub fn run(mut self) -> Result<TrainSummary> {
        let cfg = self.config.clone();
        let problem = self.problem;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let eval_x = held_out_contexts(problem, cfg.eval_size, self.seed, &self.device)?;
        let mut batches = Batches::new(problem, &cfg, &mut rng, &self.device)?;
        let fused = self.uses_fused_path();
        let mut engine = match self.model.as_mlp() {
            Some(mlp) if fused => Engine::Fused(Box::new(FusedMlp::from_mlp(mlp)?)),
            _ => {
                let vars: Vec<candle_core::Var> = self.model.params().vars().cloned().collect();
                let tensors: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
                let state = cfg.adam.init(&tensors)?;
                Engine::Composite { vars, state }
            }
        };
        let cpu_objective = problem.cpu_objective();
        let start = Instant::now();
        let mut last_loss = f64::NAN;
        let mut x_buf: Vec<f32> = Vec::new();
        for step in 0..cfg.steps {
            let (x, labels) = batches.next(problem, &cfg, &mut rng, &self.device)?;
            let lr = cfg.schedule.rate(cfg.learning_rate, step, cfg.steps);
            let (loss, grad_norm) = match &mut engine {
                Engine::Composite { vars, state } => composite_step(
                    self.model,
                    problem,
                    &cfg,
                    vars,
                    state,
                    &x,
                    labels.as_ref(),
                    lr,
                )?,
                Engine::Fused(f) => {
                    let n = x.dim(0)?;
                    x_buf.clear();
                    x_buf.extend(x.flatten_all()?.to_vec1::<f32>()?);
                    let objective = cpu_objective.expect("checked by uses_fused_path");
                    let s =
                        f.train_step(&x_buf, n, objective, &cfg.adam, lr, cfg.clip_grad_norm)?;
                    (s.loss, s.grad_norm)
                }
            };
            if !(loss.is_finite() && grad_norm.is_finite()) {
                self.save(&engine, step)?;
                let what = if loss.is_finite() {
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
            last_loss = loss;
            let done = step + 1;
            let record = Record {
                phase: "train",
                step: done,
                elapsed: start.elapsed().as_secs_f64(),
                values: vec![("loss", loss), ("grad_norm", grad_norm), ("lr", lr)],
            };
            self.emit(&record)?;
            if let Some(cb) = &mut self.on_step {
                cb(done, &record);
            }
            if self
                .snapshot
                .as_ref()
                .is_some_and(|(every, _)| done % every == 0)
            {
                self.sync(&engine)?;
                if let Some((_, f)) = &mut self.snapshot {
                    f(done, self.model);
                }
            }
            if cfg.eval_every > 0 && done % cfg.eval_every == 0 && done < cfg.steps {
                let obj = self.evaluate(&engine, &eval_x)?;
                let rec = Record {
                    phase: "eval",
                    step: done,
                    elapsed: start.elapsed().as_secs_f64(),
                    values: vec![("objective", obj)],
                };
                self.emit(&rec)?;
            }
            if cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0 {
                self.save(&engine, done)?;
            }
        }
        let final_eval = self.evaluate(&engine, &eval_x)?;
        let rec = Record {
            phase: "eval",
            step: cfg.steps,
            elapsed: start.elapsed().as_secs_f64(),
            values: vec![("objective", final_eval)],
        };
        self.emit(&rec)?;
        self.save(&engine, cfg.steps)?;
        self.sync(&engine)?;
        Ok(TrainSummary {
            steps: cfg.steps,
            seconds: start.elapsed().as_secs_f64(),
            final_loss: last_loss,
            final_eval_objective: final_eval,
            fused,
        })
    }
}

/// One composite training step: the loss from candle tensor ops, ∇_θ by candle's autodiff,
/// optional clipping, then Adam on `vars` with rate `lr`. Returns (loss, gradient norm) before
/// the update; θ is left unchanged when either is not finite.
pub fn composite_step(
    model: &dyn Model,
    problem: &dyn Problem,
    cfg: &TrainConfig,
    vars: &[candle_core::Var],
    state: &mut AdamState,
    x: &Tensor,
    labels: Option<&Tensor>,
    lr: f64,
) -> Result<(f64, f64)> {
    let pred = model.forward(x, problem)?;
    let loss = cfg.loss.value(&pred, x, labels, problem)?;
    let loss_value: f64 = loss.to_dtype(DType::F64)?.to_scalar()?;
    let store = loss.backward()?;
    let mut grads = Vec::with_capacity(vars.len());
    let mut sq = 0f64;
    for v in vars {
        let g = match store.get(v.as_tensor()) {
            Some(g) => g.detach(),
            None => v.as_tensor().zeros_like()?,
        };
        sq += g
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        grads.push(g);
    }
    let grad_norm = sq.sqrt();
    if !(loss_value.is_finite() && grad_norm.is_finite()) {
        return Ok((loss_value, grad_norm));
    }
    if let Some(max) = cfg.clip_grad_norm {
        if grad_norm > max {
            for g in &mut grads {
                *g = g.affine(max / grad_norm, 0.0)?;
            }
        }
    }
    let current: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let refs: Vec<&Tensor> = current.iter().collect();
    let new = cfg.adam.update(lr, &refs, &grads, state)?;
    for (v, t) in vars.iter().zip(new) {
        v.set(&t.detach())?;
    }
    Ok((loss_value, grad_norm))
}

/// The held-out contexts of a run with seed `seed`: drawn from their own random stream, so the
/// training batches never include them and every evaluation of the run (during training and
/// in the final report) sees the same set.
pub fn held_out_contexts(
    problem: &dyn Problem,
    n: usize,
    seed: u64,
    device: &Device,
) -> Result<Tensor> {
    const HELD_OUT_STREAM: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rng = StdRng::seed_from_u64(seed ^ HELD_OUT_STREAM);
    problem.sample_held_out(n, &mut rng, device)
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
