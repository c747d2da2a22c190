//! Models ŷθ(x): fully-amortized nets (an MLP here; semi-amortized models build on the same
//! trait and fill [`Prediction::iterates`]).

mod alista;
mod fused;
mod gru;
mod hyper_aa;
mod hypernet;
mod lista;
mod mlp;
mod neural_fp;
mod params;
pub mod preconditioner;
mod rho_policy;
mod unrolled;

pub use alista::{analytic_weight, Alista, AlistaConfig};
pub use fused::{FusedMlp, StepStats};
pub use gru::GruCell;
pub use hyper_aa::{HyperAa, HyperAaConfig, HyperAaWeights};
pub use hypernet::{HyperNet, HyperNetConfig};
pub use lista::{shrink, shrink_selected, Lista, ListaConfig, SupportRule};
pub use mlp::{Activation, Mlp, MlpConfig};
pub use neural_fp::{NeuralFp, NeuralFpConfig};
pub use params::Params;
pub use rho_policy::{FrozenRhoPolicy, PolicyActivation, RhoPolicyConfig, RhoPolicyNet};
pub use unrolled::{Adjoint, InitConfig, RateConfig, Unrolled, UnrolledConfig, UpdateRule};

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::problem::Problem;
use crate::{Error, Result};

/// What a model predicts for a batch of contexts.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// The final prediction ŷθ(x) on the domain Y, `(n, solution_dim)`.
    pub y: Tensor,
    /// The iterates ŷ⁰ … ŷᴷ of a semi-amortized model (the last equals `y`); empty for a
    /// fully-amortized model. The iterate-summed loss L_Σ (tutorial eq. 13) reads them.
    pub iterates: Vec<Tensor>,
    /// An auxiliary training penalty of the model, e.g. HyperAA's Ω(α) (tutorial eq. 55); the
    /// trainer adds it to the loss with a weight annealed to zero
    /// ([`crate::train::TrainConfig::penalty_anneal`]). `None` for most models.
    pub penalty: Option<Tensor>,
}

/// A model ŷθ mapping contexts to solutions.
pub trait Model: Send + Sync {
    /// Predicts solutions for a batch of contexts `(n, context_dim)`, mapped onto the problem's
    /// domain Y (the model composes its raw output with [`Problem::to_domain`]).
    fn forward(&self, x: &Tensor, problem: &dyn Problem) -> Result<Prediction>;

    /// The prediction the training loss sees. Default: [`Model::forward`]; a semi-amortized
    /// model trained as a warm start ([`Adjoint::WarmStart`]) leaves out its refinement steps.
    fn forward_train(&self, x: &Tensor, problem: &dyn Problem) -> Result<Prediction> {
        self.forward(x, problem)
    }

    /// The prediction after `steps` refinement steps instead of the trained number (a
    /// semi-amortized model adapting longer at test time); `None` for models without steps.
    fn forward_with_steps(
        &self,
        x: &Tensor,
        problem: &dyn Problem,
        steps: usize,
    ) -> Option<Result<Prediction>> {
        let _ = (x, problem, steps);
        None
    }

    /// (λ, CG iterations) when the model is trained by implicit differentiation of a
    /// proximal inner problem ([`Adjoint::Implicit`]): its training prediction's `y` is the
    /// inner answer y* without a graph, and `iterates[0]` the initial iterate ŷ⁰ with one.
    fn implicit(&self) -> Option<(f64, usize)> {
        None
    }

    /// The parameters θ.
    fn params(&self) -> &Params;

    /// The configuration that rebuilds this model (saved in checkpoints).
    fn config(&self) -> ModelConfig;

    /// The number K of trained unrolled layers of a semi-amortized model (`None` for a
    /// fully-amortized one). Stage-wise training ([`crate::train::TrainConfig::layerwise`])
    /// needs it.
    fn depth(&self) -> Option<usize> {
        None
    }

    /// The prediction of the first `depth` layers only (1 ≤ `depth` ≤ K), without any
    /// continuation: what stage `depth` of stage-wise training fits. Models without layers
    /// return [`Model::forward`].
    fn forward_to_depth(
        &self,
        x: &Tensor,
        problem: &dyn Problem,
        depth: usize,
    ) -> Result<Prediction> {
        let _ = depth;
        self.forward(x, problem)
    }

    /// The parameters of layer `layer` (0-based) of an unrolled model, for the new-layer phase
    /// of stage-wise training; empty for a model without layers.
    fn layer_params(&self, layer: usize) -> Vec<candle_core::Var> {
        let _ = layer;
        Vec::new()
    }

    /// The parameters that are fixed over a run and act on every iteration of it (the learned
    /// preconditioner of NeuralFP and HyperAA), which the hybrid gradient estimator trains by
    /// ES ([`crate::train::GradientEstimator::Hybrid`]); empty by default.
    fn whole_run_params(&self) -> Vec<candle_core::Var> {
        Vec::new()
    }

    /// This model as a plain [`Mlp`], which enables the fused training path.
    fn as_mlp(&self) -> Option<&Mlp> {
        None
    }

    /// This model as an [`Alista`], which [`Lista`] can start from.
    fn as_alista(&self) -> Option<&Alista> {
        None
    }

    /// Sets θ from a trained `source` model, so that training continues from it. By default
    /// `source` must have the same configuration, and θ is copied (continued training); a
    /// model may also accept other sources it can represent exactly ([`Lista`] from an
    /// [`Alista`]). Errors name what does not match.
    fn init_from(&self, source: &dyn Model) -> Result<()> {
        copy_params(self, source)
    }
}

/// θ of `target` ← θ of `source`, when both have the same configuration.
pub fn copy_params(target: &(impl Model + ?Sized), source: &dyn Model) -> Result<()> {
    let (want, have) = (target.config(), source.config());
    if want != have {
        return Err(Error::invalid(format!(
            "cannot start a '{}' model from a '{}' model with another configuration",
            want.kind(),
            have.kind()
        )));
    }
    target.params().load_map(&source.params().to_map())
}

/// The configuration of a built-in model, as written in experiment TOML files
/// (`[model] kind = "mlp"` plus that model's fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelConfig {
    /// [`Mlp`]: a fully-connected net from context to solution.
    Mlp(MlpConfig),
    /// [`Lista`]: learned ISTA for the `lasso` family (semi-amortized).
    Lista(ListaConfig),
    /// [`Alista`]: analytic LISTA (learned step sizes and thresholds only) for `lasso`.
    Alista(AlistaConfig),
    /// [`Unrolled`]: an initial iterate followed by K gradient steps with learned rates
    /// (semi-amortized, any problem).
    Unrolled(UnrolledConfig),
    /// [`HyperNet`]: support set → learner weights, for meta-learning families.
    HyperNet(HyperNetConfig),
    /// [`NeuralFp`]: learned init and GRU acceleration on Anderson, for fixed-point families.
    #[serde(rename = "neural-fp")]
    NeuralFp(NeuralFpConfig),
    /// [`HyperAa`]: learned init and Anderson coefficients, for fixed-point families.
    #[serde(rename = "hyper-aa")]
    HyperAa(HyperAaConfig),
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig::Mlp(MlpConfig::default())
    }
}

impl ModelConfig {
    /// The names of the built-in models, for `amortize list`.
    pub const NAMES: [&'static str; 7] = [
        "mlp",
        "lista",
        "alista",
        "unrolled",
        "hypernet",
        "neural-fp",
        "hyper-aa",
    ];

    /// The model's name as written in `[model] kind = ...`.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelConfig::Mlp(_) => "mlp",
            ModelConfig::Lista(_) => "lista",
            ModelConfig::Alista(_) => "alista",
            ModelConfig::Unrolled(_) => "unrolled",
            ModelConfig::HyperNet(_) => "hypernet",
            ModelConfig::NeuralFp(_) => "neural-fp",
            ModelConfig::HyperAa(_) => "hyper-aa",
        }
    }

    /// Builds the model for `problem` with parameters initialised from `rng`.
    pub fn build(
        &self,
        problem: &dyn Problem,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Box<dyn Model>> {
        match self {
            ModelConfig::Mlp(c) => Ok(Box::new(Mlp::new(
                c.clone(),
                problem.context_dim(),
                problem.solution_dim(),
                rng,
                device,
            )?)),
            ModelConfig::Lista(c) => Ok(Box::new(Lista::new(
                c.clone(),
                needs_lasso(problem, "lista")?,
                candle_core::DType::F32,
                device,
            )?)),
            ModelConfig::Alista(c) => Ok(Box::new(Alista::new(
                c.clone(),
                needs_lasso(problem, "alista")?,
                candle_core::DType::F32,
                device,
            )?)),
            ModelConfig::Unrolled(c) => {
                Ok(Box::new(Unrolled::new(c.clone(), problem, rng, device)?))
            }
            ModelConfig::HyperNet(c) => {
                Ok(Box::new(HyperNet::new(c.clone(), problem, rng, device)?))
            }
            ModelConfig::NeuralFp(c) => {
                Ok(Box::new(NeuralFp::new(c.clone(), problem, rng, device)?))
            }
            ModelConfig::HyperAa(c) => Ok(Box::new(HyperAa::new(c.clone(), problem, rng, device)?)),
        }
    }
}

/// The problem as a lasso, or an error naming the model that needs one.
fn needs_lasso<'p>(problem: &'p dyn Problem, model: &str) -> Result<&'p crate::problem::Lasso> {
    problem.as_lasso().ok_or_else(|| {
        crate::Error::invalid(format!(
            "the {model} model needs the lasso problem family, not '{}'",
            problem.name()
        ))
    })
}
