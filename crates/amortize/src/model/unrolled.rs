//! Semi-amortized models (tutorial §3.2, eq. 2): an initial iterate from a model of the
//! context, then K differentiable gradient steps on f(·; x) with learned parts.

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::gru::GruCell;
use super::{Mlp, MlpConfig, Model, ModelConfig, Params, Prediction};
use crate::problem::Problem;
use crate::{Error, Result};

/// Where the first iterate ŷ⁰ comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum InitConfig {
    /// A learned constant θ ∈ Rⁿ, the same for every context (MAML's initialisation),
    /// started at `value` in every coordinate.
    Constant {
        /// Starting value of every coordinate (default 0).
        #[serde(default)]
        value: f64,
    },
    /// A fully-amortized MLP of the context; ŷ⁰ is its output mapped onto Y.
    Mlp(MlpConfig),
    /// A learned constant started at the family's [`Problem::default_solution`] (MAML's
    /// initialisation of a learner's weights); an error for families without one.
    Problem,
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig::Mlp(MlpConfig::default())
    }
}

/// The step sizes of the unrolled gradient steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RateConfig {
    /// One fixed rate α, not learned.
    Fixed {
        /// α.
        value: f64,
    },
    /// A learned rate αₖ per step (K numbers), started at `initial`.
    PerStep {
        /// Starting rate.
        initial: f64,
    },
    /// A learned rate per coordinate, shared by the steps (Meta-SGD, Li et al. 2017: α ∈ Rⁿ),
    /// started at `initial`.
    PerCoordinate {
        /// Starting rate.
        initial: f64,
    },
    /// A learned rate per step and coordinate (K × n numbers), started at `initial`.
    PerStepCoordinate {
        /// Starting rate.
        initial: f64,
    },
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig::PerStep { initial: 0.1 }
    }
}

/// How the loss's gradient flows back through the unrolled steps (the "adjoint").
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Adjoint {
    /// Exact backpropagation through every step (eq. 6–9); needs second-order autodiff
    /// ([`crate::autodiff::enable_second_order`]) for the Hessian terms. The default.
    #[default]
    Full,
    /// First-order: each step's gradient g(ŷᵏ) is treated as a constant, so (for an
    /// unconstrained family) ∂ŷᴷ/∂ŷ⁰ = I (first-order MAML). Learned rates still get their
    /// gradient ∂L/∂αₖ = −g(ŷᵏ)·∂L/∂ŷᴷ.
    FirstOrder,
    /// Truncated backpropagation: exact through the last `last` steps, first-order (as above)
    /// through the earlier ones. `last = 0` is first-order, `last = K` is full.
    Truncated {
        /// H, the number of final steps differentiated exactly.
        last: usize,
    },
    /// Warm start (§3.2.3): training fits the initial iterate alone (the steps are not in the
    /// training graph), and the K steps refine it at prediction time only. The baseline that
    /// end-to-end training must beat.
    WarmStart,
    /// Implicit differentiation (iMAML, §4.2.3, eq. 14): the K steps descend the proximal
    /// objective f(y) + λ/2‖y − ŷ⁰‖² without a graph, and the trainer differentiates their
    /// answer y* by the implicit function theorem, ∂y*/∂ŷ⁰ = λ(∇²f(y*) + λI)⁻¹, solved by
    /// conjugate gradient on Hessian-vector products ([`crate::train::implicit_gradient`]).
    /// Memory does not grow with K.
    Implicit {
        /// λ > 0, the proximal weight.
        lambda: f64,
        /// Conjugate-gradient iterations for the linear solve (default 20).
        #[serde(default = "default_cg_iters")]
        cg_iters: usize,
    },
}

fn default_cg_iters() -> usize {
    20
}

/// What each unrolled step adds to the gradient step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum UpdateRule {
    /// Only the gradient step (default).
    #[default]
    Gradient,
    /// A learned update over a latent space (eq. 3; Andrychowicz et al. 2016): a GRU shared by
    /// all coordinates reads each coordinate's gradient and value, keeps a hidden state of
    /// `hidden` numbers per coordinate (the iterate history), and adds its read-out to the
    /// gradient step. The read-out starts at zero, so the untrained rule is gradient descent.
    Gru {
        /// Hidden units per coordinate.
        hidden: usize,
    },
    /// Adam-like steps: ŷ ← π_Y(ŷ − α m̂/(√v̂ + ε)) with the moments m, v of the gradients
    /// along the unrolled steps (bias-corrected as in [`crate::optim::Adam`]; √ of v̂ + 10⁻³⁰
    /// so that the step stays differentiable where a gradient is exactly zero). The rates α
    /// are learned as configured. The implicit adjoint's inner solver ignores this rule.
    Adam {
        /// β₁ (default 0.9).
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// β₂ (default 0.999).
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// ε (default 1e-8).
        #[serde(default = "default_adam_eps")]
        eps: f64,
    },
}

fn default_beta1() -> f64 {
    0.9
}

fn default_beta2() -> f64 {
    0.999
}

fn default_adam_eps() -> f64 {
    1e-8
}

/// The settings of [`Unrolled`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UnrolledConfig {
    /// The initial iterate (default an MLP [128, 128]).
    pub init: InitConfig,
    /// The number K of gradient steps (default 5).
    pub steps: usize,
    /// Their step sizes (default learned per step, started at 0.1).
    pub rate: RateConfig,
    /// How gradients flow through the steps (default full).
    pub adjoint: Adjoint,
    /// A learned update added to each gradient step (default none).
    #[serde(default)]
    pub update: UpdateRule,
}

impl Default for UnrolledConfig {
    fn default() -> Self {
        UnrolledConfig {
            init: InitConfig::default(),
            steps: 5,
            rate: RateConfig::default(),
            adjoint: Adjoint::Full,
            update: UpdateRule::Gradient,
        }
    }
}

enum Init {
    Constant(Var),
    Mlp(Box<Mlp>),
}

/// # Unrolled gradient steps
/// ŷ⁰ = π_Y(init_θ(x)) (a learned constant or an MLP), then for k < K
/// ŷᵏ⁺¹ = π_Y(ŷᵏ − αₖ ⊙ g(ŷᵏ)) with g(y) = ∇_z f(π_Y(z); x) at z = y (tutorial eq. 2 on the
/// domain Y). For an unconstrained family π_Y is the identity and this is plain gradient
/// descent; on the sphere g is the tangential (Riemannian) gradient and π_Y the retraction,
/// so the step sizes do not depend on the scale of the init's raw output. π_Y must fix the
/// points of Y (a projection or a normalisation). ŷθ(x) = ŷᴷ; θ = the init's parameters and
/// the learned rates α. The prediction's `iterates` are ŷ⁰ … ŷᴷ, for the iterate-summed loss
/// L_Σ (eq. 13).
pub struct Unrolled {
    config: UnrolledConfig,
    params: Params,
    init: Init,
    rates: Option<Var>,
    /// The GRU update: (W_x (2, 3H), W_h (H, 3H), b (3H), W_o (H, 1)).
    gru: Option<(GruCell, Var)>,
}

impl Unrolled {
    /// An unrolled model for `problem`, with the init's parameters drawn from `rng`.
    pub fn new(
        config: UnrolledConfig,
        problem: &dyn Problem,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Self> {
        Self::with_dtype(config, problem, rng, DType::F32, device)
    }

    /// [`Unrolled::new`] with parameters of `dtype` (f64 for finite-difference checks).
    pub fn with_dtype(
        config: UnrolledConfig,
        problem: &dyn Problem,
        rng: &mut StdRng,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let n = problem.solution_dim();
        if let Adjoint::Implicit { lambda, .. } = config.adjoint {
            if !(lambda.is_finite() && lambda > 0.0) {
                return Err(Error::invalid(
                    "unrolled: adjoint.lambda must be finite and > 0",
                ));
            }
        }
        if let Adjoint::Truncated { last } = config.adjoint {
            if last > config.steps {
                return Err(Error::invalid(format!(
                    "unrolled: adjoint.last = {last} exceeds the {} steps",
                    config.steps
                )));
            }
        }
        let mut params = Params::new();
        let init = match &config.init {
            InitConfig::Constant { value } => {
                if !value.is_finite() {
                    return Err(Error::invalid("unrolled: init.value must be finite"));
                }
                let t = Tensor::full(*value, (1, n), device)?.to_dtype(dtype)?;
                Init::Constant(params.add("init", t)?)
            }
            InitConfig::Problem => {
                let t = problem.default_solution(rng, device)?.ok_or_else(|| {
                    Error::invalid(format!(
                        "unrolled: init = problem needs a family with a default solution; '{}' has none",
                        problem.name()
                    ))
                })?;
                Init::Constant(params.add("init", t.to_dtype(dtype)?)?)
            }
            InitConfig::Mlp(c) => {
                let mlp = Mlp::new(c.clone(), problem.context_dim(), n, rng, device)?;
                let mlp = if dtype == DType::F32 {
                    mlp
                } else {
                    mlp.to_dtype(dtype)?
                };
                for (name, var) in mlp.params().iter() {
                    params.insert(format!("init.{name}"), var.clone());
                }
                Init::Mlp(Box::new(mlp))
            }
        };
        let k = config.steps;
        let rate_shape = match config.rate {
            RateConfig::Fixed { .. } => None,
            RateConfig::PerStep { .. } => Some((k, 1)),
            RateConfig::PerCoordinate { .. } => Some((1, n)),
            RateConfig::PerStepCoordinate { .. } => Some((k, n)),
        };
        let initial = match config.rate {
            RateConfig::Fixed { value: r }
            | RateConfig::PerStep { initial: r }
            | RateConfig::PerCoordinate { initial: r }
            | RateConfig::PerStepCoordinate { initial: r } => r,
        };
        if !initial.is_finite() {
            return Err(Error::invalid("unrolled: the rate must be finite"));
        }
        let rates = match rate_shape {
            Some(shape) if k > 0 => {
                let t = Tensor::full(initial, shape, device)?.to_dtype(dtype)?;
                Some(params.add("rates", t)?)
            }
            _ => None,
        };
        let gru = match config.update {
            UpdateRule::Gradient => None,
            UpdateRule::Adam { beta1, beta2, eps } => {
                if !((0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2) && eps > 0.0) {
                    return Err(Error::invalid(
                        "unrolled: adam needs beta1 and beta2 in [0, 1) and eps > 0",
                    ));
                }
                None
            }
            UpdateRule::Gru { hidden } => {
                if hidden == 0 {
                    return Err(Error::invalid("unrolled: update.hidden must be at least 1"));
                }
                let cell = GruCell::new(&mut params, "gru", 2, hidden, dtype, rng, device)?;
                let wo = params.add("gru.wo", Tensor::zeros((hidden, 1), dtype, device)?)?;
                Some((cell, wo))
            }
        };
        Ok(Unrolled {
            config,
            params,
            init,
            rates,
            gru,
        })
    }

    /// The settings.
    pub fn unrolled_config(&self) -> &UnrolledConfig {
        &self.config
    }

    /// The free initial output init_θ(x) before the map onto Y, `(n, solution_dim)`.
    fn initial(&self, x: &Tensor, problem: &dyn Problem) -> Result<Tensor> {
        match &self.init {
            Init::Constant(v) => {
                let rows = x.dim(0)?;
                Ok(v.as_tensor().broadcast_as((rows, problem.solution_dim()))?)
            }
            Init::Mlp(m) => m.forward_raw(x),
        }
    }

    /// The rate αₖ of step `k`, broadcastable against `(n, solution_dim)`.
    fn rate(&self, k: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        match (&self.rates, self.config.rate) {
            (None, RateConfig::Fixed { value }) => {
                Ok(Tensor::full(value, (1, 1), device)?.to_dtype(dtype)?)
            }
            (Some(r), RateConfig::PerStep { .. } | RateConfig::PerStepCoordinate { .. }) => {
                let last = r.dim(0)? - 1;
                Ok(r.as_tensor().narrow(0, k.min(last), 1)?)
            }
            (Some(r), _) => Ok(r.as_tensor().clone()),
            (None, _) => Err(Error::invalid("unrolled: rates missing")),
        }
    }

    /// Runs the configured steps from ŷ⁰; with `train` and a warm-start adjoint, none.
    fn run(&self, x: &Tensor, problem: &dyn Problem, train: bool) -> Result<Prediction> {
        let k = if train && self.config.adjoint == Adjoint::WarmStart {
            0
        } else {
            self.config.steps
        };
        self.run_k(x, problem, k)
    }

    fn run_k(&self, x: &Tensor, problem: &dyn Problem, k_total: usize) -> Result<Prediction> {
        let z0 = self.initial(x, problem)?;
        let x = x.to_dtype(z0.dtype())?;
        // Steps before `exact_from` use the first-order (constant-gradient) rule.
        let exact_from = match self.config.adjoint {
            Adjoint::Full | Adjoint::WarmStart => 0,
            Adjoint::FirstOrder | Adjoint::Implicit { .. } => k_total,
            Adjoint::Truncated { last } => k_total.saturating_sub(last),
        };
        let y0 = problem.to_domain(&z0)?;
        let mut y = y0.clone();
        let mut iterates = vec![y.clone()];
        let mut hidden: Option<Tensor> = None;
        let mut moments: Option<(Tensor, Tensor)> = None;
        for k in 0..k_total {
            let alpha = self.rate(k, y.dtype(), y.device())?;
            let g = if let Adjoint::Implicit { lambda, .. } = self.config.adjoint {
                // The proximal objective's gradient, with no graph at all.
                let yd = y.detach();
                problem
                    .domain_gradient(&yd, &x)?
                    .detach()
                    .add(&yd.sub(&y0.detach())?.affine(lambda, 0.0)?)?
            } else if k < exact_from {
                problem.domain_gradient(&y.detach(), &x)?.detach()
            } else {
                problem.domain_gradient(&y, &x)?
            };
            if let Adjoint::Implicit { lambda, .. } = self.config.adjoint {
                if self.gru.is_none() {
                    y = safeguarded_step(
                        problem,
                        &x,
                        &y.detach(),
                        &y0.detach(),
                        &g,
                        &alpha,
                        lambda,
                    )?;
                    iterates.push(y.clone());
                    continue;
                }
            }
            let direction = match self.config.update {
                UpdateRule::Adam { beta1, beta2, eps } => {
                    let (m, v) = match moments.take() {
                        Some((m, v)) => (m, v),
                        None => (g.zeros_like()?, g.zeros_like()?),
                    };
                    let m = m.affine(beta1, 0.0)?.add(&g.affine(1.0 - beta1, 0.0)?)?;
                    let v = v
                        .affine(beta2, 0.0)?
                        .add(&g.sqr()?.affine(1.0 - beta2, 0.0)?)?;
                    let t = (k + 1) as i32;
                    let (c1, c2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
                    let d = m
                        .affine(1.0 / c1, 0.0)?
                        .div(&v.affine(1.0 / c2, 1e-30)?.sqrt()?.affine(1.0, eps)?)?;
                    moments = Some((m, v));
                    d
                }
                _ => g.clone(),
            };
            let mut next = y.sub(&direction.broadcast_mul(&alpha)?)?;
            if let Some(gru) = &self.gru {
                let (delta, h) = gru_step(gru, &g, &y, hidden.take())?;
                next = next.add(&delta)?;
                hidden = Some(h);
            }
            y = problem.to_domain(&next)?;
            if matches!(self.config.adjoint, Adjoint::Implicit { .. }) {
                y = y.detach();
            }
            iterates.push(y.clone());
        }
        Ok(Prediction {
            y: iterates.last().expect("ẑ⁰ is always there").clone(),
            iterates,
            penalty: None,
        })
    }
}

impl Model for Unrolled {
    fn forward(&self, x: &Tensor, problem: &dyn Problem) -> Result<Prediction> {
        self.run(x, problem, false)
    }

    fn forward_train(&self, x: &Tensor, problem: &dyn Problem) -> Result<Prediction> {
        self.run(x, problem, true)
    }

    fn forward_with_steps(
        &self,
        x: &Tensor,
        problem: &dyn Problem,
        steps: usize,
    ) -> Option<Result<Prediction>> {
        Some(self.run_k(x, problem, steps))
    }

    fn implicit(&self) -> Option<(f64, usize)> {
        match self.config.adjoint {
            Adjoint::Implicit { lambda, cg_iters } => Some((lambda, cg_iters)),
            _ => None,
        }
    }

    fn params(&self) -> &Params {
        &self.params
    }

    fn config(&self) -> ModelConfig {
        ModelConfig::Unrolled(self.config.clone())
    }
}

/// One step of the implicit adjoint's inner solver on the proximal objective
/// φ(y) = f(y) + λ/2‖y − ŷ⁰‖², safeguarded per instance: the step y − s·α·g is tried with
/// s = 1, ½, ¼, … (up to 2⁻¹⁰) until φ does not increase (up to a relative 10⁻¹²), and an
/// instance with no such step
/// stays where it is. The inner answer of iMAML then never diverges, whatever the rates.
fn safeguarded_step(
    problem: &dyn Problem,
    x: &Tensor,
    y: &Tensor,
    y0: &Tensor,
    g: &Tensor,
    alpha: &Tensor,
    lambda: f64,
) -> Result<Tensor> {
    let phi = |y: &Tensor| -> Result<Tensor> {
        let prox = y.sub(y0)?.sqr()?.sum(1)?.affine(0.5 * lambda, 0.0)?;
        Ok(problem.objective(y, x)?.add(&prox)?)
    };
    let n = y.dim(0)?;
    let current = phi(y)?;
    // Up to rounding: a relative slack of 10⁻¹² lets the iteration converge to machine
    // precision instead of stalling where φ's decrease drops below its rounding error.
    let threshold = current.add(&current.abs()?.affine(1e-12, 0.0)?)?;
    let step = g.broadcast_mul(alpha)?;
    let mut scale = Tensor::ones((n, 1), y.dtype(), y.device())?;
    let mut out = y.clone();
    let mut done = Tensor::zeros(n, candle_core::DType::U8, y.device())?;
    for _ in 0..=10 {
        let candidate = problem.to_domain(&y.sub(&step.broadcast_mul(&scale)?)?)?;
        let value = phi(&candidate)?;
        // Accept where φ did not increase (and the value is finite) and not accepted before.
        let ok = value.le(&threshold)?.mul(&done.ones_like()?.sub(&done)?)?;
        let mask = ok.unsqueeze(1)?.broadcast_as(y.shape())?;
        out = mask.where_cond(&candidate, &out)?;
        done = done.add(&ok)?;
        // Summed in f64: a u8 sum overflows past 255 instances.
        if done
            .to_dtype(candle_core::DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?
            >= n as f64
        {
            break;
        }
        scale = scale.affine(0.5, 0.0)?;
    }
    Ok(out)
}

/// One coordinate-wise GRU step: every coordinate of every row is one sequence, with input
/// (gradient, value); returns the read-out `(n, d)` and the new hidden state `(n·d, H)`.
fn gru_step(
    (cell, wo): &(GruCell, Var),
    g: &Tensor,
    y: &Tensor,
    hidden: Option<Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (n, d) = g.dims2()?;
    let input = Tensor::cat(&[g.reshape((n * d, 1))?, y.reshape((n * d, 1))?], 1)?;
    let h = match hidden {
        Some(h) => h,
        None => Tensor::zeros((n * d, cell.hidden()), g.dtype(), g.device())?,
    };
    let h_new = cell.step(&input, &h)?;
    let delta = h_new.matmul(wo.as_tensor())?.reshape((n, d))?;
    Ok((delta, h_new))
}
