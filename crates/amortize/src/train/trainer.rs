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
use super::smoothing::{es_gradient, GradientEstimator};
use crate::loss::{IterateWeights, Loss};
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
    /// The iterate-summed loss L_Σ over a semi-amortized model's iterates (tutorial eq. 13;
    /// default only the last iterate).
    pub iterates: IterateWeights,
    /// How ∇_θ L is obtained: autodiff (default) or the zeroth-order ES estimate of the
    /// smoothed loss (eq. 15).
    pub gradient: GradientEstimator,
    /// Stage-wise training of an unrolled model (default none: every step fits the whole
    /// model).
    pub layerwise: Option<Layerwise>,
    /// The fraction of training over which the weight of a model's auxiliary penalty
    /// ([`crate::model::Prediction::penalty`], e.g. HyperAA's Ω(α)) decays linearly from 1 to 0
    /// (default 0.5; 0 never applies it).
    pub penalty_anneal: f64,
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
            iterates: IterateWeights::Last,
            gradient: GradientEstimator::Autodiff,
            layerwise: None,
            penalty_anneal: 0.5,
            eval_every: 250,
            eval_size: 1024,
            checkpoint_every: 0,
            fused: true,
        }
    }
}

impl TrainConfig {
    /// The weight of a model's auxiliary penalty at `step`: 1 − step / (penalty_anneal · steps),
    /// floored at 0.
    pub fn penalty_weight(&self, step: usize) -> f64 {
        let horizon = self.penalty_anneal * self.steps as f64;
        if horizon <= 0.0 {
            return 0.0;
        }
        (1.0 - step as f64 / horizon).max(0.0)
    }

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
        if !(0.0..=1.0).contains(&self.penalty_anneal) {
            return bad("penalty_anneal must be in [0, 1]");
        }
        self.iterates.validate()?;
        self.gradient.validate()?;
        if let Some(lw) = &self.layerwise {
            lw.validate()?;
            if matches!(self.iterates, IterateWeights::Custom { .. }) {
                return bad("layerwise training takes iterates = last, uniform or linear, not custom weights (the number of iterates changes with the stage)");
            }
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
        batch_size: usize,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<(Tensor, Option<Tensor>)> {
        if cfg.data == DataConfig::Generated {
            let (x, y) = problem
                .sample_with_solutions(batch_size, rng, device)?
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
            let x = problem.sample_contexts(batch_size, rng, device)?;
            let labels = if cfg.loss.needs_labels() {
                Some(exact_labels(problem, &x)?)
            } else {
                None
            };
            return Ok((x, labels));
        };
        let size = fx.dim(0)?;
        let b = batch_size.min(size);
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
        /// All of θ.
        vars: Vec<candle_core::Var>,
        /// The part of θ being trained now (all of it, except during the first phase of a
        /// layer-wise stage).
        active: Vec<candle_core::Var>,
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
            && self.config.layerwise.is_none()
            && self.config.gradient == GradientEstimator::Autodiff
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
                Engine::Composite {
                    active: vars.clone(),
                    vars,
                    state,
                }
            }
        };
        let layers = match (&cfg.layerwise, self.model.depth()) {
            (None, _) => 0,
            (Some(_), Some(k)) if k <= cfg.steps => k,
            (Some(_), Some(k)) => {
                return Err(Error::invalid(format!(
                    "train: layerwise training of {k} layers needs at least {k} steps, not {}",
                    cfg.steps
                )))
            }
            (Some(_), None) => {
                return Err(Error::invalid(format!(
                    "train: layerwise training needs an unrolled model with layers (lista, alista), not '{}'",
                    model_kind(self.model)
                )))
            }
        };
        // The parameters the hybrid estimator trains by ES.
        let whole_run = self.model.whole_run_params();
        if matches!(cfg.gradient, GradientEstimator::Hybrid { .. }) && whole_run.is_empty() {
            return Err(Error::invalid(format!(
                "train.gradient: hybrid trains a model's whole-run parameters (a learned preconditioner) by ES, and the {} model has none",
                model_kind(self.model)
            )));
        }
        let steps_without_gradient = problem
            .fixed_point_map()
            .is_some_and(|map| !map.coordinate_steps_differentiable());
        if matches!(cfg.gradient, GradientEstimator::Autodiff)
            && !whole_run.is_empty()
            && steps_without_gradient
        {
            return Err(Error::invalid(format!(
                "train.gradient: the {} model's preconditioner sets the steps of the '{}' map, which backpropagation cannot differentiate; train it with gradient = {{ kind = \"hybrid\", sigma = 0.05, samples = 4 }}",
                model_kind(self.model),
                problem.name()
            )));
        }
        let cpu_objective = problem.cpu_objective();
        let start = Instant::now();
        let mut last_loss = f64::NAN;
        let mut x_buf: Vec<f32> = Vec::new();
        // The ES perturbations have their own stream, so batches do not depend on them.
        let mut es_rng = StdRng::seed_from_u64(self.seed ^ 0xE5_5EED);
        for step in 0..cfg.steps {
            let phase = cfg
                .layerwise
                .as_ref()
                .map(|lw| lw.phase(step, cfg.steps, layers));
            let batch_size = phase
                .as_ref()
                .and_then(|p| p.batch_size)
                .unwrap_or(cfg.batch_size);
            let (x, labels) = batches.next(problem, &cfg, batch_size, &mut rng, &self.device)?;
            let lr = match &phase {
                Some(p) => cfg
                    .schedule
                    .rate(cfg.learning_rate * p.rate, step - p.first, p.len),
                None => cfg.schedule.rate(cfg.learning_rate, step, cfg.steps),
            };
            let mut es_blew_up = false;
            let (loss, grad_norm) = match &mut engine {
                Engine::Composite {
                    vars,
                    active,
                    state,
                } => {
                    if let Some(p) = phase.as_ref().filter(|p| p.first == step) {
                        *active = if p.only_new_layer {
                            self.model.layer_params(p.depth - 1)
                        } else {
                            vars.clone()
                        };
                        if active.is_empty() {
                            return Err(Error::invalid(format!(
                                "train: the {} model names no parameters of layer {}",
                                model_kind(self.model),
                                p.depth
                            )));
                        }
                        let tensors: Vec<&Tensor> = active.iter().map(|v| v.as_tensor()).collect();
                        *state = cfg.adam.init(&tensors)?;
                    }
                    let depth = phase.as_ref().map(|p| p.depth);
                    // The loss at the current parameters, a forward pass only (for ES).
                    let loss = || {
                        loss_value(
                            self.model,
                            problem,
                            &cfg,
                            &x,
                            labels.as_ref(),
                            depth,
                            cfg.penalty_weight(step),
                        )
                    };
                    match cfg.gradient {
                        GradientEstimator::Autodiff => composite_step(
                            self.model,
                            problem,
                            &cfg,
                            active,
                            state,
                            &x,
                            labels.as_ref(),
                            lr,
                            depth,
                            cfg.penalty_weight(step),
                        )?,
                        GradientEstimator::Es { sigma, samples } => match finite_estimate(
                            es_gradient(active, sigma, samples, &mut es_rng, loss),
                        )? {
                            None => {
                                es_blew_up = true;
                                (f64::NAN, f64::NAN)
                            }
                            Some((grads, loss)) => {
                                let grads = grads.into_iter().map(Some).collect();
                                apply_present(&cfg, active, state, grads, lr, loss)?
                            }
                        },
                        GradientEstimator::Hybrid { sigma, samples } => match finite_estimate(
                            es_gradient(&whole_run, sigma, samples, &mut es_rng, loss),
                        )? {
                            None => {
                                es_blew_up = true;
                                (f64::NAN, f64::NAN)
                            }
                            Some((es_grads, _)) => hybrid_step(
                                self.model,
                                problem,
                                &cfg,
                                active,
                                state,
                                &x,
                                labels.as_ref(),
                                lr,
                                depth,
                                cfg.penalty_weight(step),
                                (&whole_run, es_grads),
                            )?,
                        },
                    }
                }
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
                let what = if es_blew_up {
                    "loss at an ES perturbation"
                } else if loss.is_finite() {
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

/// Stage-wise training of an unrolled model with K layers (Chen et al. 2018 §4; Liu et al.
/// 2019), as written in `[train] layerwise = { }`.
///
/// The steps are split evenly into K stages (with a `finish`, its share of the steps comes
/// last and the stages split the rest). Stage t fits the loss at layer t (only layers
/// 1 … t run). It has phases, each starting with fresh Adam moments: first the new layer t
/// alone at the base rate for `new_layer_fraction` of the stage's steps, then layers 1 … t
/// together at the base rate times each `fine_tune` factor in turn, splitting the rest of the
/// stage evenly. The schedule runs within each phase (a cosine schedule decays once per
/// phase). The finish trains all K layers together, end to end, at its own rate factor and
/// batch size: a long, low-noise last pass over the whole model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Layerwise {
    /// Fraction of each stage that trains only the new layer (default 1/3).
    pub new_layer_fraction: f64,
    /// Rate factors of the phases that train all layers so far (default [0.2, 0.02]).
    pub fine_tune: Vec<f64>,
    /// An end-to-end phase after the K stages (default none).
    pub finish: Option<Finish>,
}

/// The end-to-end phase that closes layer-wise training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finish {
    /// Its share of all training steps, in (0, 1).
    pub fraction: f64,
    /// Factor of the base learning rate (default 0.1).
    #[serde(default = "default_finish_rate")]
    pub rate: f64,
    /// Batch size of its steps (default: `train.batch_size`).
    #[serde(default)]
    pub batch_size: Option<usize>,
}

fn default_finish_rate() -> f64 {
    0.1
}

impl Default for Layerwise {
    fn default() -> Self {
        Layerwise {
            new_layer_fraction: 1.0 / 3.0,
            fine_tune: vec![0.2, 0.02],
            finish: None,
        }
    }
}

/// Where a step falls in a layer-wise plan.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerwisePhase {
    /// The layers that run: 1 … `depth` (the stage).
    pub depth: usize,
    /// The first step of this phase.
    pub first: usize,
    /// Its number of steps.
    pub len: usize,
    /// Whether only layer `depth` trains.
    pub only_new_layer: bool,
    /// The factor of the base learning rate.
    pub rate: f64,
    /// The batch size, when it is not `train.batch_size` (the finish's).
    pub batch_size: Option<usize>,
}

impl Layerwise {
    /// Checks the fractions and factors, naming the bad one.
    pub fn validate(&self) -> Result<()> {
        let f = self.new_layer_fraction;
        if !(0.0..=1.0).contains(&f) {
            return Err(Error::invalid(
                "train.layerwise.new_layer_fraction must lie in [0, 1]",
            ));
        }
        if self.fine_tune.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
            return Err(Error::invalid(
                "train.layerwise.fine_tune factors must be finite and > 0",
            ));
        }
        if let Some(f) = &self.finish {
            if !(f.fraction > 0.0 && f.fraction < 1.0) {
                return Err(Error::invalid(
                    "train.layerwise.finish.fraction must lie in (0, 1)",
                ));
            }
            if !(f.rate.is_finite() && f.rate > 0.0) {
                return Err(Error::invalid(
                    "train.layerwise.finish.rate must be finite and > 0",
                ));
            }
            if f.batch_size == Some(0) {
                return Err(Error::invalid(
                    "train.layerwise.finish.batch_size must be at least 1",
                ));
            }
        }
        if self.fine_tune.is_empty() && f < 1.0 {
            return Err(Error::invalid(
                "train.layerwise: with no fine_tune phases, new_layer_fraction must be 1",
            ));
        }
        Ok(())
    }

    /// The phase of step `step` (0-based) of `steps` for a model with `layers` layers.
    pub fn phase(&self, step: usize, steps: usize, layers: usize) -> LayerwisePhase {
        let layers = layers.max(1);
        // The stages' steps; the finish takes the rest.
        let staged = match &self.finish {
            Some(f) => (((1.0 - f.fraction) * steps as f64).round() as usize).max(layers),
            None => steps,
        };
        if let Some(f) = self.finish.as_ref().filter(|_| step >= staged) {
            return LayerwisePhase {
                depth: layers,
                first: staged,
                len: steps - staged,
                only_new_layer: false,
                rate: f.rate,
                batch_size: f.batch_size,
            };
        }
        let steps = staged;
        let bound = |j: usize| (j * steps).div_ceil(layers);
        let t = (0..layers)
            .find(|&j| step < bound(j + 1))
            .unwrap_or(layers - 1);
        let (s0, s1) = (bound(t), bound(t + 1));
        let len = (s1 - s0) as f64;
        let mut phases: Vec<(bool, f64, f64)> = Vec::new();
        if self.new_layer_fraction > 0.0 {
            phases.push((true, 1.0, self.new_layer_fraction));
        }
        let rest = (1.0 - self.new_layer_fraction) / self.fine_tune.len().max(1) as f64;
        phases.extend(self.fine_tune.iter().map(|&r| (false, r, rest)));
        let (mut first, mut acc) = (s0, 0.0);
        for (i, &(only_new_layer, rate, fraction)) in phases.iter().enumerate() {
            acc += fraction;
            let end = if i + 1 == phases.len() {
                s1
            } else {
                s0 + (acc * len).round() as usize
            };
            if step < end || i + 1 == phases.len() {
                return LayerwisePhase {
                    depth: t + 1,
                    first,
                    len: end - first,
                    only_new_layer,
                    rate,
                    batch_size: None,
                };
            }
            first = end;
        }
        unreachable!("the last phase takes every remaining step")
    }
}

/// The `kind` name of a model's configuration, for messages.
fn model_kind(model: &dyn Model) -> String {
    serde_json::to_value(model.config())
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str().map(str::to_owned)))
        .unwrap_or_else(|| "model".into())
}

/// What the training loss sees: the first `depth` layers during a layer-wise stage, else the
/// model's training forward pass.
fn training_prediction(
    model: &dyn Model,
    problem: &dyn Problem,
    x: &Tensor,
    depth: Option<usize>,
) -> Result<crate::model::Prediction> {
    match depth {
        Some(d) => model.forward_to_depth(x, problem, d),
        None => model.forward_train(x, problem),
    }
}

/// One composite training step: the loss (summed over iterates per `cfg.iterates`) from candle
/// tensor ops, ∇_θ by candle's autodiff, optional clipping, then Adam on `vars` with rate `lr`.
/// With `depth`, only the first `depth` layers run (a stage of layer-wise training). Returns
/// (loss, gradient norm) before the update; θ is left unchanged when either is not finite.
/// A model's auxiliary penalty enters with weight `penalty_weight`.
#[allow(clippy::too_many_arguments)]
pub fn composite_step(
    model: &dyn Model,
    problem: &dyn Problem,
    cfg: &TrainConfig,
    vars: &[candle_core::Var],
    state: &mut AdamState,
    x: &Tensor,
    labels: Option<&Tensor>,
    lr: f64,
    depth: Option<usize>,
    penalty_weight: f64,
) -> Result<(f64, f64)> {
    let pred = training_prediction(model, problem, x, depth)?;
    if let Some((lambda, cg_iters)) = model.implicit() {
        return implicit_step(
            problem, cfg, vars, state, x, labels, lr, &pred, lambda, cg_iters,
        );
    }
    let (loss_value, grads) = backpropagated(cfg, &pred, vars, x, labels, problem, penalty_weight)?;
    apply_present(cfg, vars, state, grads, lr, loss_value)
}

/// The training loss of `pred` and its gradient for each of `vars` by reverse-mode autodiff.
/// Parameters outside the loss's graph (later layers during a layer-wise stage) get `None`:
/// no gradient and no update.
fn backpropagated(
    cfg: &TrainConfig,
    pred: &crate::model::Prediction,
    vars: &[candle_core::Var],
    x: &Tensor,
    labels: Option<&Tensor>,
    problem: &dyn Problem,
    penalty_weight: f64,
) -> Result<(f64, Vec<Option<Tensor>>)> {
    let loss = training_loss(cfg, pred, x, labels, problem, penalty_weight)?;
    let loss_value: f64 = loss.to_dtype(DType::F64)?.to_scalar()?;
    let store = loss.backward()?;
    let grads = vars
        .iter()
        .map(|v| store.get(v.as_tensor()).map(|g| g.detach()))
        .collect();
    Ok((loss_value, grads))
}

/// An ES estimate, or `None` when a perturbed loss was not finite: the training loop then
/// stops as for any non-finite loss, with the last good parameters saved and the step named.
fn finite_estimate(estimate: Result<(Vec<Tensor>, f64)>) -> Result<Option<(Vec<Tensor>, f64)>> {
    match estimate {
        Err(Error::NonFinite { .. }) => Ok(None),
        estimate => estimate.map(Some),
    }
}

/// The training loss at the current parameters (a forward pass only, for ES).
fn loss_value(
    model: &dyn Model,
    problem: &dyn Problem,
    cfg: &TrainConfig,
    x: &Tensor,
    labels: Option<&Tensor>,
    depth: Option<usize>,
    penalty_weight: f64,
) -> Result<f64> {
    let pred = training_prediction(model, problem, x, depth)?;
    let loss = training_loss(cfg, &pred, x, labels, problem, penalty_weight)?;
    Ok(loss.to_dtype(DType::F64)?.to_scalar()?)
}

/// One step of the hybrid estimator ([`GradientEstimator::Hybrid`]): the ES estimate `es.1`
/// for the variables `es.0` and the backpropagated gradient for the rest of `vars`, each part
/// clipped to `clip_grad_norm` on its own (the ES estimate's scale has nothing to do with the
/// other's), then one Adam update. Returns the loss and the norm of both parts together.
#[allow(clippy::too_many_arguments)]
fn hybrid_step(
    model: &dyn Model,
    problem: &dyn Problem,
    cfg: &TrainConfig,
    vars: &[candle_core::Var],
    state: &mut AdamState,
    x: &Tensor,
    labels: Option<&Tensor>,
    lr: f64,
    depth: Option<usize>,
    penalty_weight: f64,
    es: (&[candle_core::Var], Vec<Tensor>),
) -> Result<(f64, f64)> {
    let pred = training_prediction(model, problem, x, depth)?;
    let (loss_value, mut grads) =
        backpropagated(cfg, &pred, vars, x, labels, problem, penalty_weight)?;
    let (es_vars, es_grads) = es;
    let mut from_es = vec![false; vars.len()];
    for (e, g) in es_vars.iter().zip(es_grads) {
        if let Some(i) = vars
            .iter()
            .position(|v| v.as_tensor().id() == e.as_tensor().id())
        {
            grads[i] = Some(g);
            from_es[i] = true;
        }
    }
    let mut sq = [0f64; 2];
    for (g, &es) in grads.iter().zip(&from_es) {
        if let Some(g) = g {
            sq[usize::from(es)] += crate::optim::sum_of_squares(g)?;
        }
    }
    let grad_norm = (sq[0] + sq[1]).sqrt();
    if !(loss_value.is_finite() && grad_norm.is_finite()) {
        return Ok((loss_value, grad_norm));
    }
    let scales = sq.map(|s| clip_scale(cfg, s.sqrt()));
    let grads: Vec<Option<Tensor>> = grads
        .into_iter()
        .zip(&from_es)
        .map(|(g, &es)| {
            g.map(|g| g.affine(scales[usize::from(es)], 0.0))
                .transpose()
        })
        .collect::<candle_core::Result<_>>()?;
    let grads: Vec<Option<&Tensor>> = grads.iter().map(Option::as_ref).collect();
    cfg.adam.update_vars(lr, vars, &grads, 1.0, state)?;
    Ok((loss_value, grad_norm))
}

/// The loss of `pred` summed over iterates per `cfg`, plus `penalty_weight` times the model's
/// auxiliary penalty when it has one.
fn training_loss(
    cfg: &TrainConfig,
    pred: &crate::model::Prediction,
    x: &Tensor,
    labels: Option<&Tensor>,
    problem: &dyn Problem,
    penalty_weight: f64,
) -> Result<Tensor> {
    let loss = cfg
        .loss
        .value_summed(pred, &cfg.iterates, x, labels, problem)?;
    match &pred.penalty {
        Some(p) if penalty_weight > 0.0 => Ok(loss.add(&p.affine(penalty_weight, 0.0)?)?),
        _ => Ok(loss),
    }
}

/// One step by implicit differentiation (iMAML): the loss at the inner answer y*, its gradient
/// g there, v = λ(∇²f(y*) + λI)⁻¹ g by CG, and ∂L/∂θ = (∂ŷ⁰/∂θ)ᵀ v by backpropagating the
/// surrogate ⟨ŷ⁰, sg(v)⟩. The loss must depend on the prediction's final y only.
#[allow(clippy::too_many_arguments)]
fn implicit_step(
    problem: &dyn Problem,
    cfg: &TrainConfig,
    vars: &[candle_core::Var],
    state: &mut AdamState,
    x: &Tensor,
    labels: Option<&Tensor>,
    lr: f64,
    pred: &crate::model::Prediction,
    lambda: f64,
    cg_iters: usize,
) -> Result<(f64, f64)> {
    if cfg.iterates != IterateWeights::Last || cfg.loss == Loss::Reptile {
        return Err(Error::invalid(
            "train: implicit differentiation needs a loss of the final answer only (iterates = last, not reptile)",
        ));
    }
    let y0 = pred.iterates.first().ok_or_else(|| {
        Error::invalid("train: implicit differentiation needs the initial iterate")
    })?;
    let y_star = pred.y.detach();
    let loss_value: f64 = cfg
        .loss
        .value_of(&y_star, x, labels, problem)?
        .to_dtype(DType::F64)?
        .to_scalar()?;
    let g = crate::autodiff::grad_at(&y_star, |y| cfg.loss.value_of(y, x, labels, problem))?;
    let v = super::implicit::implicit_gradient(problem, &y_star, x, &g, lambda, cg_iters)?;
    let surrogate = y0.mul(&v.detach())?.sum_all()?;
    let store = surrogate.backward()?;
    let grads: Vec<Option<Tensor>> = vars
        .iter()
        .map(|v| store.get(v.as_tensor()).map(|g| g.detach()))
        .collect();
    apply_present(cfg, vars, state, grads, lr, loss_value)
}

/// Clipping and the Adam update for gradients that may be missing (no update for those).
/// Returns (loss, gradient norm); θ is left unchanged when either is not finite.
fn apply_present(
    cfg: &TrainConfig,
    vars: &[candle_core::Var],
    state: &mut AdamState,
    grads: Vec<Option<Tensor>>,
    lr: f64,
    loss_value: f64,
) -> Result<(f64, f64)> {
    let mut sq = 0f64;
    for g in grads.iter().flatten() {
        sq += crate::optim::sum_of_squares(g)?;
    }
    let grad_norm = sq.sqrt();
    if !(loss_value.is_finite() && grad_norm.is_finite()) {
        return Ok((loss_value, grad_norm));
    }
    let grads: Vec<Option<&Tensor>> = grads.iter().map(Option::as_ref).collect();
    cfg.adam
        .update_vars(lr, vars, &grads, clip_scale(cfg, grad_norm), state)?;
    Ok((loss_value, grad_norm))
}

/// The factor that clips a gradient of norm `norm` to `cfg.clip_grad_norm` (1 without clipping
/// or below the bound).
fn clip_scale(cfg: &TrainConfig, norm: f64) -> f64 {
    match cfg.clip_grad_norm {
        Some(max) if norm > max => max / norm,
        _ => 1.0,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, NeuralFpConfig};
    use crate::problem::ElasticNetConfig;

    /// The hybrid step gives the whole-run parameters the ES estimate and the others the
    /// backpropagated gradient. Adam's first step moves every entry by −lr·sign(gradient), so a
    /// fabricated ES estimate of +1 moves every preconditioner entry by −lr, including the
    /// hidden layer, which gets no backpropagated gradient while the zeroed last layer blocks it.
    #[test]
    fn hybrid_step_routes_es_and_backpropagated_gradients() -> Result<()> {
        let p = ProblemConfig::ElasticNetIsta(ElasticNetConfig {
            rows: 6,
            cols: 5,
            density: 0.5,
            ..ElasticNetConfig::default()
        })
        .build()?;
        let model = ModelConfig::NeuralFp(NeuralFpConfig {
            steps: 4,
            memory: 2,
            init: vec![8],
            hidden: 4,
            coordinatewise: true,
            precondition: true,
            ..NeuralFpConfig::default()
        })
        .build(p.as_ref(), &mut StdRng::seed_from_u64(0), &Device::Cpu)?;
        let cfg = TrainConfig {
            iterates: IterateWeights::Uniform,
            clip_grad_norm: None,
            ..TrainConfig::default()
        };
        let x = p.sample_contexts(16, &mut StdRng::seed_from_u64(1), &Device::Cpu)?;
        let vars: Vec<candle_core::Var> = model.params().vars().cloned().collect();
        let whole_run = model.whole_run_params();
        assert_eq!(whole_run.len(), 4, "the preconditioner's two layers");
        // The backpropagated gradient, at the parameters before the step.
        let pred = model.forward_train(&x, p.as_ref())?;
        let store = training_loss(&cfg, &pred, &x, None, p.as_ref(), 1.0)?.backward()?;
        let before: Vec<Vec<f32>> = vars
            .iter()
            .map(|v| v.as_tensor().flatten_all()?.to_vec1::<f32>())
            .collect::<candle_core::Result<_>>()?;
        let ones: Vec<Tensor> = whole_run
            .iter()
            .map(|v| v.as_tensor().ones_like())
            .collect::<candle_core::Result<_>>()?;
        let tensors: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
        let mut state = cfg.adam.init(&tensors)?;
        let lr = 0.01;
        hybrid_step(
            model.as_ref(),
            p.as_ref(),
            &cfg,
            &vars,
            &mut state,
            &x,
            None,
            lr,
            None,
            1.0,
            (&whole_run, ones),
        )?;
        let (mut checked_es, mut checked_autodiff) = (0, 0);
        for (v, before) in vars.iter().zip(&before) {
            let after = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let es = whole_run
                .iter()
                .any(|w| w.as_tensor().id() == v.as_tensor().id());
            let grad = match es {
                true => vec![1.0; after.len()],
                false => match store.get(v.as_tensor()) {
                    Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
                    None => vec![0.0; after.len()],
                },
            };
            for ((a, b), g) in after.iter().zip(before).zip(&grad) {
                // Entries with a gradient near Adam's ε move by less than lr; skip them.
                if g.abs() < 1e-4 {
                    continue;
                }
                let expected = b - (lr as f32) * g.signum();
                assert!(
                    (a - expected).abs() < 1e-5,
                    "es {es}: moved from {b} to {a}, expected {expected} (gradient {g})"
                );
                match es {
                    true => checked_es += 1,
                    false => checked_autodiff += 1,
                }
            }
        }
        let es_entries: usize = whole_run.iter().map(|v| v.as_tensor().elem_count()).sum();
        assert_eq!(checked_es, es_entries, "every preconditioner entry moved");
        assert!(checked_autodiff > 20, "{checked_autodiff} entries checked");
        Ok(())
    }
}
