//! The amortization gap E_x[f(ŷθ(x); x) − f(y*(x); x)] on held-out contexts.

use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::problem::Problem;
use crate::Result;

/// Quantiles of a sample.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
}

impl Quantiles {
    /// Quantiles of `values` (nearest rank); all NaN for an empty sample.
    pub fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| -> f64 {
            if v.is_empty() {
                return f64::NAN;
            }
            let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            v[i]
        };
        Quantiles {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: q(1.0),
        }
    }
}

/// The amortization gap on a held-out batch.
#[derive(Debug, Clone, Serialize)]
pub struct GapReport {
    /// Number of contexts.
    pub n: usize,
    /// Mean f(ŷ; x).
    pub mean_objective: f64,
    /// Mean f(y*; x).
    pub mean_optimum: f64,
    /// Mean f(ŷ; x) − f(y*; x).
    pub mean_gap: f64,
    /// Quantiles of the per-context gap.
    pub gap_quantiles: Quantiles,
    /// The tolerance of `fraction_within_tolerance`.
    pub tolerance: f64,
    /// Fraction of contexts whose gap is at most `tolerance`.
    pub fraction_within_tolerance: f64,
    /// Mean optimality residual of the predictions (see [`Problem::residual`]).
    pub mean_residual: f64,
}

fn to_f64_vec(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?)
}

/// Measures the gap of predictions `y_pred` against solutions `y_star` on contexts `x`.
pub fn amortization_gap(
    problem: &dyn Problem,
    x: &Tensor,
    y_pred: &Tensor,
    y_star: &Tensor,
    tolerance: f64,
) -> Result<GapReport> {
    let fp = to_f64_vec(&problem.objective(y_pred, x)?)?;
    let fs = to_f64_vec(&problem.objective(y_star, x)?)?;
    let res = to_f64_vec(&problem.residual(y_pred, x)?)?;
    let n = fp.len();
    let gaps: Vec<f64> = fp.iter().zip(&fs).map(|(a, b)| a - b).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(GapReport {
        n,
        mean_objective: mean(&fp),
        mean_optimum: mean(&fs),
        mean_gap: mean(&gaps),
        gap_quantiles: Quantiles::of(&gaps),
        tolerance,
        fraction_within_tolerance: gaps.iter().filter(|g| **g <= tolerance).count() as f64
            / n.max(1) as f64,
        mean_residual: mean(&res),
    })
}
