//! Losses L(ŷθ) for learning θ (tutorial §4.1).
//!
//! * regression (eq. 10): L_reg = E_x ‖ŷθ(x) − y*(x)‖², needs labels y*(x);
//! * objective (eq. 11): L_obj = E_x f(ŷθ(x); x), needs only f;
//! * a weighted mix of the two.

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
            Loss::Objective => false,
            Loss::Regression => true,
            Loss::Mix { regression, .. } => *regression != 0.0,
        }
    }

    /// The scalar loss of `prediction` on contexts `x` (labels `(n, solution_dim)` when needed).
    pub fn value(
        &self,
        prediction: &Prediction,
        x: &Tensor,
        labels: Option<&Tensor>,
        problem: &dyn Problem,
    ) -> Result<Tensor> {
        let objective =
            || -> Result<Tensor> { Ok(problem.objective(&prediction.y, x)?.mean_all()?) };
        let regression = || -> Result<Tensor> {
            let y_star = labels.ok_or_else(|| {
                Error::invalid("the regression loss needs labels y*(x), and none were given")
            })?;
            Ok(prediction.y.sub(y_star)?.sqr()?.sum(1)?.mean_all()?)
        };
        match *self {
            Loss::Objective => objective(),
            Loss::Regression => regression(),
            Loss::Mix {
                objective: wo,
                regression: wr,
            } => Ok(objective()?
                .affine(wo, 0.0)?
                .add(&regression()?.affine(wr, 0.0)?)?),
        }
    }
}
