//! A learned diagonal preconditioner of a fixed-point map (tutorial §6.4; used by NeuralFP and
//! HyperAA): per-coordinate step multipliers predicted from the family's per-coordinate
//! context.
//!
//! For g(y) = prox_{t·h}(y − t∇φ(y)) the family provides g_D(y) = prox_{D·h}(y − D∇φ(y)) with
//! D = t·diag(d) ([`FixedPointMap::apply_with_steps`]), which has g's fixed points for every
//! positive d; for the ADMM map of `qp-admm`, the iteration with ρᵢ = ρ·dᵢ per constraint
//! (not differentiable in d: trained by ES, `gradient = hybrid`). The multipliers are
//!
//! dᵢ = exp(B·tanh(uᵢ/B)),  uᵢ = MLP(cᵢ),  B = [`PRECONDITION_BOUND`],
//!
//! with cᵢ coordinate i's context descriptors, shared over coordinates and fixed over a run: an
//! accelerator's history then holds pairs of one consistent map, where multipliers that changed
//! every iteration would break Anderson's secant information. The MLP's last layer starts at
//! zero, so the untrained preconditioner is d = 1, the family's own map. On elastic-net-ista,
//! dᵢ = 1/(t·Hᵢᵢ) is the classical Jacobi preconditioner; on qp-admm a constant d is a
//! rescaled scalar ρ.

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;

use super::neural_fp::{checked_coordinate_context, zeroed_mlp};
use super::{Mlp, Params};
use crate::problem::{FixedPointMap, Problem};
use crate::{Error, Result};

/// Bound B on the log of the learned step multipliers: dᵢ ∈ [e^{−B}, e^{B}] (e⁶ ≈ 400; on
/// elastic-net-ista the Jacobi multipliers 1/(t·Hᵢᵢ) reach about 200).
pub const PRECONDITION_BOUND: f64 = 6.0;

/// Hidden width of the multipliers' MLP.
const HIDDEN: usize = 16;

/// The learned step multipliers; see the module documentation.
pub(crate) struct StepPreconditioner {
    mlp: Mlp,
    features: usize,
    dim: usize,
    dtype: DType,
}

impl StepPreconditioner {
    /// A preconditioner for `problem`'s map, its parameters registered as `precondition.*`;
    /// errors, naming `model`, when the map has no per-coordinate steps or context.
    pub(crate) fn new(
        params: &mut Params,
        problem: &dyn Problem,
        map: &dyn FixedPointMap,
        model: &str,
        dtype: DType,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<Self> {
        let features = map.coordinate_context_dim();
        if !map.supports_coordinate_steps() || features == 0 {
            return Err(Error::invalid(format!(
                "{model}: precondition needs a map with per-coordinate steps and context, which '{}' lacks",
                problem.name()
            )));
        }
        let mlp = zeroed_mlp(
            params,
            "precondition",
            &[HIDDEN],
            features,
            1,
            dtype,
            rng,
            device,
        )?;
        Ok(StepPreconditioner {
            mlp,
            features,
            dim: problem.solution_dim(),
            dtype,
        })
    }

    /// Descriptors per coordinate it reads.
    pub(crate) fn features(&self) -> usize {
        self.features
    }

    /// The multipliers d `(rows, dim)` for contexts `x`, from the family's per-coordinate
    /// context (read here; errors, naming `model`, when it is missing or misshapen).
    pub(crate) fn multipliers_for(
        &self,
        map: &dyn FixedPointMap,
        x: &Tensor,
        model: &str,
    ) -> Result<Tensor> {
        let context =
            checked_coordinate_context(map, x, (self.dim, self.features), self.dtype, model)?;
        self.multipliers(&context)
    }

    /// The multipliers d `(rows, dim)` from a checked per-coordinate context
    /// `(rows, dim, features)` ([`checked_coordinate_context`]).
    pub(crate) fn multipliers(&self, context: &Tensor) -> Result<Tensor> {
        let rows = context.dim(0)?;
        let context = context.reshape((rows * self.dim, self.features))?;
        let b = PRECONDITION_BOUND;
        Ok(self
            .mlp
            .forward_raw(&context)?
            .affine(1.0 / b, 0.0)?
            .tanh()?
            .affine(b, 0.0)?
            .exp()?
            .reshape((rows, self.dim))?)
    }
}

/// The preconditioner's parameters in `params` (those named `precondition.*`).
pub(crate) fn preconditioner_vars(params: &Params) -> Vec<candle_core::Var> {
    params
        .iter()
        .filter(|(name, _)| name.starts_with("precondition."))
        .map(|(_, v)| v.clone())
        .collect()
}

/// g(y) or, with multipliers `steps`, the preconditioned g_D(y).
pub(crate) fn apply_map(
    map: &dyn FixedPointMap,
    y: &Tensor,
    x: &Tensor,
    steps: Option<&Tensor>,
) -> Result<Tensor> {
    match steps {
        Some(d) => map.apply_with_steps(y, x, d),
        None => map.apply(y, x),
    }
}
