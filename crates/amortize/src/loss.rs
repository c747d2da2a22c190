//! Losses L(ŷθ) for learning θ (tutorial §4.1).
//!
//! * regression (eq. 10): L_reg = E_x ‖ŷθ(x) − y*(x)‖², needs labels y*(x);
//! * objective (eq. 11): L_obj = E_x f(ŷθ(x); x), needs only f;
//! * a weighted mix of the two;
//! * each of them summed over a semi-amortized model's iterates with [`IterateWeights`]
//!   (L_Σ, eq. 13).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::model::Prediction;
use crate::problem::Problem;
use crate::{Error, Result};

/// Which loss trains the model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Loss {
    /// L_obj = mean f(ŷ; x) (tutorial eq. 11). The default.
    #[default]
    Objective,
    /// L_reg = mean ‖ŷ − y*‖² (tutorial eq. 10); labels come from the exact solver.
    Regression,
    /// mean log₁₀(f(ŷ; x) + 10⁻¹²), for objectives ≥ 0 whose minimum is 0, such as the
    /// normalised residual of a fixed-point family: every decade of progress counts the same,
    /// so late iterates of L_Σ weigh as much as early ones.
    #[serde(rename = "log-objective")]
    LogObjective,
    /// The meta-loss: mean of [`Problem::query_objective`], the loss on each context's
    /// held-out (query) part, e.g. a meta-learning task's query set after adaptation.
    Query,
    /// Reptile (Nichol et al. 2018): ½ mean ‖ŷ⁰ − sg(ŷᴷ)‖² with the adapted iterate ŷᴷ held
    /// constant (sg), so ∇_θ = ∂ŷ⁰/∂θ · mean(ŷ⁰ − ŷᴷ): for a MAML-style constant init the Reptile
    /// direction θ − mean φ_K. Needs a model with iterates (unrolled).
    Reptile,
    /// objective · L_obj + regression · L_reg.
    Mix {
        /// Weight of L_obj.
        objective: f64,
        /// Weight of L_reg.
        regression: f64,
    },
}

impl Loss {
    /// Whether the loss needs labels y*(x).
    pub fn needs_labels(&self) -> bool {
        match self {
            Loss::Objective | Loss::LogObjective | Loss::Query | Loss::Reptile => false,
            Loss::Regression => true,
            Loss::Mix { regression, .. } => *regression != 0.0,
        }
    }

    /// The scalar loss of the final prediction `prediction.y` on contexts `x` (labels
    /// `(n, solution_dim)` when needed).
    pub fn value(
        &self,
        prediction: &Prediction,
        x: &Tensor,
        labels: Option<&Tensor>,
        problem: &dyn Problem,
    ) -> Result<Tensor> {
        if *self == Loss::Reptile {
            return self.reptile(prediction);
        }
        self.value_of(&prediction.y, x, labels, problem)
    }

    /// ½ mean ‖ŷ⁰ − sg(ŷᴷ)‖².
    fn reptile(&self, prediction: &Prediction) -> Result<Tensor> {
        let first = prediction.iterates.first().ok_or_else(|| {
            Error::invalid("the reptile loss needs a model with adaptation steps (unrolled)")
        })?;
        Ok(first
            .sub(&prediction.y.detach())?
            .sqr()?
            .sum(1)?
            .mean_all()?
            .affine(0.5, 0.0)?)
    }

    /// The iterate-summed loss L_Σ = Σₖ wₖ L(ŷᵏ) (tutorial eq. 13) over the iterates
    /// ŷ¹ … ŷᴷ of `prediction` with `weights`; for a prediction without iterates (a
    /// fully-amortized model), or with [`IterateWeights::Last`], this is [`Loss::value`].
    pub fn value_summed(
        &self,
        prediction: &Prediction,
        weights: &IterateWeights,
        x: &Tensor,
        labels: Option<&Tensor>,
        problem: &dyn Problem,
    ) -> Result<Tensor> {
        // Reptile compares the first and last iterates itself; it is not summed over them.
        if *self == Loss::Reptile
            || prediction.iterates.len() < 2
            || *weights == IterateWeights::Last
        {
            return self.value(prediction, x, labels, problem);
        }
        let w = weights.weights(prediction.iterates.len() - 1)?;
        let mut total: Option<Tensor> = None;
        for (y, &wk) in prediction.iterates[1..].iter().zip(&w) {
            if wk == 0.0 {
                continue;
            }
            let term = self.value_of(y, x, labels, problem)?.affine(wk, 0.0)?;
            total = Some(match total {
                Some(t) => t.add(&term)?,
                None => term,
            });
        }
        total.map_or_else(|| self.value(prediction, x, labels, problem), Ok)
    }

    /// The scalar loss of predictions `y` `(n, solution_dim)` on contexts `x`.
    pub fn value_of(
        &self,
        y: &Tensor,
        x: &Tensor,
        labels: Option<&Tensor>,
        problem: &dyn Problem,
    ) -> Result<Tensor> {
        let objective = || -> Result<Tensor> { Ok(problem.objective(y, x)?.mean_all()?) };
        let regression = || -> Result<Tensor> {
            let y_star = labels.ok_or_else(|| {
                Error::invalid("the regression loss needs labels y*(x), and none were given")
            })?;
            Ok(y.sub(&y_star.to_dtype(y.dtype())?)?
                .sqr()?
                .sum(1)?
                .mean_all()?)
        };
        match *self {
            Loss::Objective => objective(),
            Loss::Regression => regression(),
            Loss::LogObjective => Ok(problem
                .objective(y, x)?
                .affine(1.0, 1e-12)?
                .log()?
                .mean_all()?
                .affine(1.0 / std::f64::consts::LN_10, 0.0)?),
            Loss::Reptile => Err(Error::invalid(
                "the reptile loss compares a model's first and last iterates, not one prediction",
            )),
            Loss::Query => Ok(problem
                .query_objective(y, x)?
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "the query loss needs contexts with a query part; problem '{}' has none",
                        problem.name()
                    ))
                })?
                .mean_all()?),
            Loss::Mix {
                objective: wo,
                regression: wr,
            } => Ok(objective()?
                .affine(wo, 0.0)?
                .add(&regression()?.affine(wr, 0.0)?)?),
        }
    }
}

/// The weights wₖ of the iterate-summed loss L_Σ = Σₖ wₖ L(ŷᵏ), k = 1 … K (tutorial eq. 13),
/// as written in `[train] iterates = { kind = "linear" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum IterateWeights {
    /// Only the final iterate: L_Σ = L(ŷᴷ) (the default).
    #[default]
    Last,
    /// wₖ = 1/K.
    Uniform,
    /// Increasing weights wₖ = k / Σⱼ j, so late iterates count most.
    Linear,
    /// Given weights, one per iterate ŷ¹ … ŷᴷ.
    Custom {
        /// w₁ … w_K (finite, ≥ 0).
        weights: Vec<f64>,
    },
}

impl IterateWeights {
    /// The K weights w₁ … w_K for a model with `k` iterates after ŷ⁰.
    pub fn weights(&self, k: usize) -> Result<Vec<f64>> {
        Ok(match self {
            IterateWeights::Last => (1..=k).map(|i| if i == k { 1.0 } else { 0.0 }).collect(),
            IterateWeights::Uniform => vec![1.0 / k as f64; k],
            IterateWeights::Linear => {
                let total = (k * (k + 1)) as f64 / 2.0;
                (1..=k).map(|i| i as f64 / total).collect()
            }
            IterateWeights::Custom { weights } => {
                if weights.len() != k {
                    return Err(Error::invalid(format!(
                        "train.iterates: {} custom weights given for a model with {k} iterates",
                        weights.len()
                    )));
                }
                weights.clone()
            }
        })
    }

    /// Checks custom weights are finite and non-negative.
    pub fn validate(&self) -> Result<()> {
        if let IterateWeights::Custom { weights } = self {
            if weights.is_empty() || weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
                return Err(Error::invalid(
                    "train.iterates: custom weights must be a non-empty list of finite numbers >= 0",
                ));
            }
        }
        Ok(())
    }
}
