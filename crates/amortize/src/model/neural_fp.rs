//! Neural fixed-point acceleration (NeuralFP; Venkataraman & Amos 2021; tutorial §6.4.1,
//! eq. 49–50): a learned initial iterate and hidden state, and a recurrent acceleration model
//! on top of Anderson acceleration.

use std::collections::VecDeque;

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::gru::GruCell;
use super::preconditioner::{apply_map, preconditioner_vars, StepPreconditioner};
use super::{Mlp, MlpConfig, Model, ModelConfig, Params, Prediction};
use crate::problem::{FixedPointMap, Problem};
use crate::solver::{anderson_update, anderson_weights, stack_history};
use crate::{Error, Result};

/// Settings of [`NeuralFp`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NeuralFpConfig {
    /// Trained iterations K (default 25).
    pub steps: usize,
    /// Anderson memory M: the update mixes the last M + 1 iterates (default 5).
    pub memory: usize,
    /// Anderson's relative ridge λ (default 1e-3: on elastic-net-ista as fast as 1e-8 and
    /// more robust, and the least-squares weights react less sharply to the iterates).
    pub ridge: f64,
    /// Hidden widths of the init model x ↦ (ŷ⁰, ĥ⁰) (default [128]); empty turns the learned
    /// init off (ŷ⁰ = 0, ĥ⁰ = 0).
    pub init: Vec<usize>,
    /// Width of the GRU's hidden state (default 64).
    pub hidden: usize,
    /// Backpropagate through the fixed-point dynamics of one iteration only (default true):
    /// each iterate yᵗ, t ≥ 1, enters the next step as a constant, while the GRU's hidden
    /// state and the init keep their full gradient. Through all K Anderson steps the gradient
    /// explodes (norms of 10³–10⁴ on elastic-net-ista: the least-squares weights react sharply
    /// to the iterates), and training then raises the loss at any learning rate.
    pub truncated: bool,
    /// One GRU shared by all coordinates, as in learned optimisers (default false: one GRU on
    /// the whole vector). Coordinate i reads [COORDINATE_FEATURES] features, Rᵢ/s, (ŷ_AA − ŷ)ᵢ/s
    /// and ŷᵢ/s with s = ‖R‖/√n, whether gᵢ ≠ 0 and ŷᵢ ≠ 0 (the support, for proximal maps),
    /// log₁₀(‖R‖/‖R⁰‖)/4 and t/K, then the family's per-coordinate context, into its own hidden
    /// state, and outputs its correction s·w_oᵀĥᵢ. The init then predicts ŷ⁰ only (ĥ⁰ = 0).
    pub coordinatewise: bool,
    /// With `coordinatewise`, also feed each coordinate the family's per-coordinate
    /// descriptors of the context ([`FixedPointMap::coordinate_context`]; default true, a no-op
    /// for families without them). On elastic-net-ista these are the coordinate's curvature
    /// relative to the step and its coupling, which tell the shared GRU how far each
    /// coordinate's ISTA step falls short.
    pub coordinate_context: bool,
    /// Also learn a diagonal preconditioner of the map (default false): per-coordinate step
    /// multipliers from the family's per-coordinate context, fixed over the run, and the model
    /// iterates the preconditioned map g_D, which has g's fixed points (see
    /// [`super::preconditioner`]; they start at 1, g itself). Needs a family whose map has
    /// per-coordinate steps (elastic-net-ista: dᵢ = 1/(t·Hᵢᵢ) is the Jacobi preconditioner).
    pub precondition: bool,
}

/// Inputs per coordinate of the coordinatewise acceleration model (before the family's
/// per-coordinate context).
pub const COORDINATE_FEATURES: usize = 7;

/// The scaled residual, Anderson step and iterate are clamped to ±this before the
/// coordinatewise GRU: once an instance has converged in f32, ‖R‖ is at its floor while the
/// Anderson step is not, and their ratio would reach 10⁸ and more.
const FEATURE_BOUND: f64 = 1e3;

impl Default for NeuralFpConfig {
    fn default() -> Self {
        NeuralFpConfig {
            steps: 25,
            memory: 5,
            ridge: 1e-3,
            init: vec![128],
            hidden: 64,
            truncated: true,
            coordinatewise: false,
            coordinate_context: true,
            precondition: false,
        }
    }
}

/// # NeuralFP
/// (ŷ⁰, ĥ⁰) = init_θ(x), then for t = 0 … K − 1 (eq. 49)
///
/// g = g(ŷᵗ; x), R = g − ŷᵗ, ŷ_AA = AA_Update over the last M + 1 pairs (eq. 47–48),
/// ĥᵗ⁺¹ = GRU([R/‖R‖, (ŷ_AA − ŷᵗ)/‖R‖], ĥᵗ),  ŷᵗ⁺¹ = ŷ_AA + ‖R‖ · W_o ĥᵗ⁺¹,
///
/// trained with L_Σ on the family's normalised residuals (eq. 50). The correction is scaled by
/// the residual, so a fixed point of g stays a fixed point of the learned iteration. W_o and
/// the init's output layer start at zero: with those learned parts off the iterates are
/// Anderson's exactly (Venkataraman & Amos, Prop. 1; tested). Anderson's weights α* are
/// differentiated through their least-squares solve ([`crate::solver::anderson_weights`]).
///
/// With [`NeuralFpConfig::coordinatewise`], one GRU shared by all coordinates reads
/// per-coordinate features instead, and the correction is s·w_oᵀĥᵢ with s = ‖R‖/√n. With
/// [`NeuralFpConfig::precondition`], g is replaced throughout by a learned diagonally
/// preconditioned map g_D with the same fixed points (D = t·diag(d(x)), d fixed per instance);
/// the loss and every reported residual stay those of the family's g.
///
/// Past K iterations ([`Model::forward_with_steps`]) plain Anderson (on g_D when
/// preconditioned) continues from the learned iterates and history: a warm start whose answer
/// a residual check of g can certify.
pub struct NeuralFp {
    config: NeuralFpConfig,
    params: Params,
    init: Option<Mlp>,
    gru: GruCell,
    wo: Var,
    dim: usize,
    /// Per-coordinate context descriptors read by the coordinatewise GRU (0: none).
    context_features: usize,
    /// The learned diagonal preconditioner of the map.
    precondition: Option<StepPreconditioner>,
    dtype: DType,
}

/// A relu MLP `inputs → hidden → outputs` in `dtype` whose last layer starts at zero (so it
/// starts by predicting 0), with its parameters registered in `params` as `{prefix}.{name}`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn zeroed_mlp(
    params: &mut Params,
    prefix: &str,
    hidden: &[usize],
    inputs: usize,
    outputs: usize,
    dtype: DType,
    rng: &mut StdRng,
    device: &Device,
) -> Result<Mlp> {
    let mlp = Mlp::new(
        MlpConfig {
            hidden: hidden.to_vec(),
            activation: super::Activation::Relu,
            project_output: false,
        },
        inputs,
        outputs,
        rng,
        device,
    )?
    .to_dtype(dtype)?;
    let (w, b) = mlp.layers().last().expect("an mlp has at least one layer");
    w.set(&w.as_tensor().zeros_like()?)?;
    b.set(&b.as_tensor().zeros_like()?)?;
    for (name, var) in mlp.params().iter() {
        params.insert(format!("{prefix}.{name}"), var.clone());
    }
    Ok(mlp)
}

/// The family's fixed-point map, or an error naming the model that needs one.
pub(crate) fn needs_map<'p>(
    problem: &'p dyn Problem,
    model: &str,
) -> Result<&'p dyn FixedPointMap> {
    problem.fixed_point_map().ok_or_else(|| {
        Error::invalid(format!(
            "the {model} model needs a fixed-point family (elastic-net-ista, fixed-point-toy), not '{}'",
            problem.name()
        ))
    })
}

/// ‖v‖ per row as `(n, 1)`, smoothed by 10⁻³⁰ under the root.
pub(crate) fn row_norm(v: &Tensor) -> Result<Tensor> {
    Ok(v.sqr()?.sum_keepdim(1)?.affine(1.0, 1e-30)?.sqrt()?)
}

/// The family's per-coordinate context `(rows, dim, features)` of contexts `x`, detached, in
/// `dtype`; errors, naming `model`, when the family gives none or one of another shape.
pub(crate) fn checked_coordinate_context(
    map: &dyn FixedPointMap,
    x: &Tensor,
    (dim, features): (usize, usize),
    dtype: DType,
    model: &str,
) -> Result<Tensor> {
    let context = map.coordinate_context(x)?.ok_or_else(|| {
        Error::invalid(format!(
            "{model}: the model reads a per-coordinate context the family lacks"
        ))
    })?;
    let expected = (x.dim(0)?, dim, features);
    if context.dims3()? != expected {
        return Err(Error::invalid(format!(
            "{model}: the family's per-coordinate context has shape {:?}, expected {expected:?}",
            context.dims()
        )));
    }
    Ok(context.to_dtype(dtype)?.detach())
}

impl NeuralFp {
    /// A NeuralFP model for the fixed-point family `problem` (f32 parameters from `rng`).
    pub fn new(
        config: NeuralFpConfig,
        problem: &dyn Problem,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Self> {
        Self::with_dtype(config, problem, rng, DType::F32, device)
    }

    /// As [`NeuralFp::new`] with parameters of `dtype` (f64 for gradient checks).
    pub fn with_dtype(
        config: NeuralFpConfig,
        problem: &dyn Problem,
        rng: &mut StdRng,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let map = needs_map(problem, "neural-fp")?;
        if config.steps == 0 || config.hidden == 0 || config.init.contains(&0) {
            return Err(Error::invalid(
                "neural-fp: steps, hidden and init widths must be at least 1",
            ));
        }
        if !(config.ridge.is_finite() && config.ridge >= 0.0) {
            return Err(Error::invalid("neural-fp: ridge must be finite and >= 0"));
        }
        let dim = problem.solution_dim();
        let mut params = Params::new();
        let context_features = match config.coordinatewise && config.coordinate_context {
            true => map.coordinate_context_dim(),
            false => 0,
        };
        // The coordinatewise model starts every coordinate's hidden state at zero.
        let (gru_inputs, outputs, init_hidden) = match config.coordinatewise {
            true => (COORDINATE_FEATURES + context_features, 1, 0),
            false => (2 * dim, dim, config.hidden),
        };
        let init = if config.init.is_empty() {
            None
        } else {
            Some(zeroed_mlp(
                &mut params,
                "init",
                &config.init,
                problem.context_dim(),
                dim + init_hidden,
                dtype,
                rng,
                device,
            )?)
        };
        let precondition = match config.precondition {
            true => Some(StepPreconditioner::new(
                &mut params,
                problem,
                map,
                "neural-fp",
                dtype,
                rng,
                device,
            )?),
            false => None,
        };
        let gru = GruCell::new(
            &mut params,
            "acc",
            gru_inputs,
            config.hidden,
            dtype,
            rng,
            device,
        )?;
        let wo = params.add(
            "acc.wo",
            Tensor::zeros((config.hidden, outputs), dtype, device)?,
        )?;
        Ok(NeuralFp {
            config,
            params,
            init,
            gru,
            wo,
            dim,
            context_features,
            precondition,
            dtype,
        })
    }

    /// The settings.
    pub fn neural_fp_config(&self) -> &NeuralFpConfig {
        &self.config
    }

    fn run(&self, x: &Tensor, problem: &dyn Problem, total: usize) -> Result<Prediction> {
        let map = needs_map(problem, "neural-fp")?;
        let n = x.dim(0)?;
        let x = x.to_dtype(self.dtype)?;
        let hidden_rows = if self.config.coordinatewise {
            n * self.dim
        } else {
            n
        };
        let zero_hidden =
            || Tensor::zeros((hidden_rows, self.config.hidden), self.dtype, x.device());
        let (mut y, mut h) = match &self.init {
            Some(mlp) if self.config.coordinatewise => (mlp.forward_raw(&x)?, zero_hidden()?),
            Some(mlp) => {
                let out = mlp.forward_raw(&x)?;
                (
                    out.narrow(1, 0, self.dim)?,
                    out.narrow(1, self.dim, self.config.hidden)?,
                )
            }
            None => (
                Tensor::zeros((n, self.dim), self.dtype, x.device())?,
                zero_hidden()?,
            ),
        };
        // The family's per-coordinate context, read once for the GRU and the preconditioner
        // (which read the same descriptors when both are on).
        let features = match &self.precondition {
            Some(p) => p.features(),
            None => self.context_features,
        };
        let context = match features {
            0 => None,
            k => Some(checked_coordinate_context(
                map,
                &x,
                (self.dim, k),
                self.dtype,
                "neural-fp",
            )?),
        };
        let steps = match (&self.precondition, &context) {
            (Some(p), Some(c)) => Some(p.multipliers(c)?),
            _ => None,
        };
        let mut state = CoordinateState {
            context: context.filter(|_| self.context_features > 0),
            reference: None,
        };
        let mut history: VecDeque<(Tensor, Tensor)> = VecDeque::new();
        let mut iterates = vec![y.clone()];
        for t in 0..total {
            if self.config.truncated && t > 0 {
                y = y.detach();
            }
            let g = apply_map(map, &y, &x, steps.as_ref())?;
            let r = g.sub(&y)?;
            history.push_back((y.clone(), g.clone()));
            while history.len() > self.config.memory + 1 {
                history.pop_front();
            }
            let (ys, gs) = stack_history(history.iter().map(|(y, g)| (y, g)))?;
            let alpha = anderson_weights(&gs.sub(&ys)?, self.config.ridge)?;
            let y_aa = anderson_update(&alpha, &ys, &gs, 1.0)?;
            y = if t < self.config.steps {
                let norm = row_norm(&r)?;
                let correction = if self.config.coordinatewise {
                    let step = CoordinateStep {
                        r: &r,
                        y: &y,
                        y_aa: &y_aa,
                        g: &g,
                        norm: &norm,
                        t,
                    };
                    let head = self.coordinate_head(&step, &mut state, &mut h)?;
                    head.broadcast_mul(&self.scale(&norm)?)?
                } else {
                    let u = Tensor::cat(
                        &[r.broadcast_div(&norm)?, y_aa.sub(&y)?.broadcast_div(&norm)?],
                        1,
                    )?;
                    h = self.gru.step(&u, &h)?;
                    h.matmul(self.wo.as_tensor())?.broadcast_mul(&norm)?
                };
                y_aa.add(&correction)?
            } else {
                y_aa
            };
            iterates.push(y.clone());
        }
        Ok(Prediction {
            y,
            iterates,
            penalty: None,
        })
    }
}

/// What the coordinatewise model reads at iteration `t`: the residual R = g − ŷ, the iterate
/// ŷ, Anderson's ŷ_AA, g(ŷ) and ‖R‖ per row.
struct CoordinateStep<'a> {
    r: &'a Tensor,
    y: &'a Tensor,
    y_aa: &'a Tensor,
    g: &'a Tensor,
    norm: &'a Tensor,
    t: usize,
}

/// What the coordinatewise model keeps over a run: the family's per-coordinate context and
/// ‖R⁰‖, the reference of its progress feature (set at the first step).
struct CoordinateState {
    context: Option<Tensor>,
    reference: Option<Tensor>,
}

impl NeuralFp {
    /// The coordinatewise scale s = ‖R‖/√n per row, `(rows, 1)`, from ‖R‖ `(rows, 1)`.
    fn scale(&self, norm: &Tensor) -> Result<Tensor> {
        Ok(norm.affine(1.0 / (self.dim as f64).sqrt(), 0.0)?)
    }

    /// The coordinatewise model's head w_oᵀĥᵢ, `(rows, dim)`, for every coordinate (see
    /// [`NeuralFpConfig::coordinatewise`]); advances the hidden states `h` (rows·dim).
    fn coordinate_head(
        &self,
        step: &CoordinateStep,
        state: &mut CoordinateState,
        h: &mut Tensor,
    ) -> Result<Tensor> {
        let CoordinateStep {
            r,
            y,
            y_aa,
            g,
            norm,
            t,
        } = *step;
        let (n, dim) = r.dims2()?;
        let scale = self.scale(norm)?;
        let reference = state.reference.get_or_insert_with(|| norm.clone());
        let nonzero = |v: &Tensor| -> Result<Tensor> { Ok(v.ne(0.0)?.to_dtype(self.dtype)?) };
        let progress = norm
            .broadcast_div(reference)?
            .log()?
            .affine(1.0 / (4.0 * std::f64::consts::LN_10), 0.0)?
            .broadcast_as((n, dim))?
            .contiguous()?;
        let step_features = Tensor::stack(
            &[
                r.broadcast_div(&scale)?
                    .clamp(-FEATURE_BOUND, FEATURE_BOUND)?,
                y_aa.sub(y)?
                    .broadcast_div(&scale)?
                    .clamp(-FEATURE_BOUND, FEATURE_BOUND)?,
                y.broadcast_div(&scale)?
                    .clamp(-FEATURE_BOUND, FEATURE_BOUND)?,
                nonzero(g)?,
                nonzero(y)?,
                progress,
                Tensor::full(t as f64 / self.config.steps as f64, (n, dim), r.device())?
                    .to_dtype(self.dtype)?,
            ],
            2,
        )?;
        let features = match &state.context {
            Some(c) => Tensor::cat(&[&step_features, c], 2)?,
            None => step_features,
        }
        .reshape((n * dim, COORDINATE_FEATURES + self.context_features))?;
        *h = self.gru.step(&features, h)?;
        Ok(h.matmul(self.wo.as_tensor())?.reshape((n, dim))?)
    }
}

impl Model for NeuralFp {
    fn forward(&self, x: &Tensor, problem: &dyn Problem) -> Result<Prediction> {
        self.run(x, problem, self.config.steps)
    }

    fn forward_with_steps(
        &self,
        x: &Tensor,
        problem: &dyn Problem,
        steps: usize,
    ) -> Option<Result<Prediction>> {
        Some(self.run(x, problem, steps))
    }

    fn params(&self) -> &Params {
        &self.params
    }

    fn whole_run_params(&self) -> Vec<candle_core::Var> {
        preconditioner_vars(&self.params)
    }

    fn config(&self) -> ModelConfig {
        ModelConfig::NeuralFp(self.config.clone())
    }
}
