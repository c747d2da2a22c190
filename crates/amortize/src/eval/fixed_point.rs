//! Fixed-point acceleration compared (tutorial §6.4): the normalised residual
//! ‖g(yᵗ) − yᵗ‖ / ‖g(0)‖ along iterations of the plain iteration, Anderson acceleration and a
//! learned model (NeuralFP's figure), the iterations each instance needs to a tolerance, and
//! the wall-clock of the batched iterations.

use std::time::Instant;

use candle_core::{DType, Tensor};
use serde::Serialize;

use super::iterates::solver_iterates;
use crate::model::Model;
use crate::problem::{normalised_residual, FixedPointMap, Problem};
use crate::solver::Anderson;
use crate::{Error, Result};

/// One method's residuals on a held-out batch.
#[derive(Debug, Clone, Serialize)]
pub struct ResidualCurve {
    /// The method.
    pub name: String,
    /// Mean normalised residual at iterations 0 … T.
    pub mean: Vec<f64>,
    /// Median normalised residual at iterations 0 … T.
    pub median: Vec<f64>,
    /// Per instance, the first iteration whose normalised residual is at most the tolerance
    /// (`None`: not within T iterations).
    pub iterations_to_tolerance: Vec<Option<usize>>,
    /// Seconds per instance for the whole run of T iterations, batched.
    pub seconds_per_instance: f64,
}

impl ResidualCurve {
    /// The fraction of instances within tolerance after T iterations.
    pub fn solved_fraction(&self) -> f64 {
        let n = self.iterations_to_tolerance.len().max(1);
        self.iterations_to_tolerance
            .iter()
            .filter(|i| i.is_some())
            .count() as f64
            / n as f64
    }

    /// The median iterations to tolerance, counting unsolved instances as T + 1 (so a median
    /// above T means most were not solved).
    pub fn median_iterations(&self) -> usize {
        let cap = self.mean.len();
        let mut v: Vec<usize> = self
            .iterations_to_tolerance
            .iter()
            .map(|i| i.unwrap_or(cap))
            .collect();
        v.sort_unstable();
        v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(cap)
    }

    /// The mean iterations to tolerance over the solved instances.
    pub fn mean_iterations_solved(&self) -> f64 {
        let solved: Vec<usize> = self
            .iterations_to_tolerance
            .iter()
            .flatten()
            .copied()
            .collect();
        solved.iter().sum::<usize>() as f64 / solved.len().max(1) as f64
    }
}

/// Per-instance normalised residuals `(T + 1) × n` of a run of iterates.
fn residual_table(
    map: &dyn FixedPointMap,
    iterates: &[Tensor],
    x: &Tensor,
) -> Result<Vec<Vec<f64>>> {
    iterates
        .iter()
        .map(|y| {
            Ok(normalised_residual(map, &y.detach(), x)?
                .to_dtype(DType::F64)?
                .to_vec1()?)
        })
        .collect()
}

fn curve(name: String, table: &[Vec<f64>], tol: f64, seconds: f64) -> ResidualCurve {
    let n = table.first().map_or(0, Vec::len);
    let mean = table
        .iter()
        .map(|r| r.iter().sum::<f64>() / n.max(1) as f64)
        .collect();
    let median = table
        .iter()
        .map(|r| {
            let mut v = r.clone();
            v.sort_by(|a, b| a.total_cmp(b));
            v.get(v.len().saturating_sub(1) / 2)
                .copied()
                .unwrap_or(f64::NAN)
        })
        .collect();
    let iterations_to_tolerance = (0..n)
        .map(|i| table.iter().position(|r| r[i] <= tol))
        .collect();
    ResidualCurve {
        name,
        mean,
        median,
        iterations_to_tolerance,
        seconds_per_instance: seconds / n.max(1) as f64,
    }
}

/// Runs the plain iteration, Anderson acceleration (memory `memory`, relative ridge `ridge`)
/// and, when given, `model`
/// (through [`Model::forward_with_steps`]) for `iterations` iterations from their starts (0
/// for the classical ones) on contexts `x`, and compares their normalised residuals with
/// tolerance `tol`.
pub fn fixed_point_comparison(
    problem: &dyn Problem,
    model: Option<&dyn Model>,
    x: &Tensor,
    iterations: usize,
    memory: usize,
    ridge: f64,
    tol: f64,
) -> Result<Vec<ResidualCurve>> {
    let map = problem.fixed_point_map().ok_or_else(|| {
        Error::invalid(format!(
            "fixed-point comparison: '{}' is not a fixed-point family",
            problem.name()
        ))
    })?;
    let x = x.to_dtype(DType::F32)?;
    let zero = Tensor::zeros((x.dim(0)?, problem.solution_dim()), DType::F32, x.device())?;
    let mut out = Vec::new();
    for (name, m) in [
        ("plain iteration".to_string(), 0),
        (format!("Anderson (M = {memory})"), memory),
    ] {
        let solver = Anderson::new(map, m, 1.0, ridge)?;
        let t0 = Instant::now();
        let its = solver_iterates(&solver, &zero, &x, iterations)?;
        let seconds = t0.elapsed().as_secs_f64();
        out.push(curve(name, &residual_table(map, &its, &x)?, tol, seconds));
    }
    if let Some(model) = model {
        let t0 = Instant::now();
        let pred = model
            .forward_with_steps(&x, problem, iterations)
            .ok_or_else(|| {
                Error::invalid("fixed-point comparison: the model has no iterations")
            })??;
        let seconds = t0.elapsed().as_secs_f64();
        out.push(curve(
            "learned".to_string(),
            &residual_table(map, &pred.iterates, &x)?,
            tol,
            seconds,
        ));
    }
    Ok(out)
}
