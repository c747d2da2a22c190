//! The fixed-point view of a run (tutorial §6.4): normalised residual per iteration of the
//! plain iteration, Anderson and the learned model (`residuals.csv`, a figure), iterations to
//! tolerance per instance (`iterations.csv`, the solved fraction against iterations as a
//! figure) and a summary with wall-clock per instance (`fixed-point.json`).

use std::path::{Path, PathBuf};

use amortize::eval::{fixed_point_comparison, ResidualCurve};
use amortize::model::{Model, ModelConfig};
use amortize::problem::Problem;
use amortize::train::{held_out_contexts, write_atomic};
use anyhow::Result;
use candle_core::Device;

use crate::experiment::EvalConfig;
use crate::plots;

/// Writes the files above into `dir` (figures under `fig_dir`) and returns the figures.
pub fn fixed_point_figures(
    dir: &Path,
    fig_dir: &Path,
    problem: &dyn Problem,
    model: &dyn Model,
    cfg: &EvalConfig,
    seed: u64,
) -> Result<Vec<PathBuf>> {
    // Anderson runs with the model's memory and ridge (HyperAA has no ridge: 1e-3, NeuralFP's
    // default).
    let (memory, ridge, trained) = match model.config() {
        ModelConfig::NeuralFp(c) => (c.memory, c.ridge, c.steps),
        ModelConfig::HyperAa(c) => (c.memory, 1e-3, c.steps),
        _ => (5, 1e-3, 0),
    };
    let x = held_out_contexts(problem, cfg.size, seed, &Device::Cpu)?;
    let iterations = cfg.fixed_point_iterations.max(trained);
    let tol = cfg.fixed_point_tolerance;
    let curves = fixed_point_comparison(problem, Some(model), &x, iterations, memory, ridge, tol)?;

    let mut csv = String::from("k");
    for c in &curves {
        csv.push_str(&format!(",{0} mean,{0} median", c.name));
    }
    csv.push('\n');
    for k in 0..=iterations {
        csv.push_str(&k.to_string());
        for c in &curves {
            csv.push_str(&format!(",{},{}", c.mean[k], c.median[k]));
        }
        csv.push('\n');
    }
    write_atomic(&dir.join("residuals.csv"), csv.as_bytes())?;

    let mut its = String::from("instance");
    for c in &curves {
        its.push_str(&format!(",{}", c.name));
    }
    its.push('\n');
    for i in 0..x.dim(0)? {
        its.push_str(&i.to_string());
        for c in &curves {
            let v = c.iterations_to_tolerance[i].map_or(String::new(), |v| v.to_string());
            its.push_str(&format!(",{v}"));
        }
        its.push('\n');
    }
    write_atomic(&dir.join("iterations.csv"), its.as_bytes())?;

    let at = |c: &ResidualCurve, k: usize| c.mean.get(k).copied().unwrap_or(f64::NAN);
    let summary: Vec<serde_json::Value> = curves
        .iter()
        .map(|c| {
            serde_json::json!({
                "method": c.name,
                "mean_normalised_residual_at_trained_steps": at(c, trained),
                "trained_steps": trained,
                "median_iterations_to_tolerance": c.median_iterations(),
                "mean_iterations_to_tolerance_solved": c.mean_iterations_solved(),
                "solved_fraction": c.solved_fraction(),
                "seconds_per_instance": c.seconds_per_instance,
            })
        })
        .collect();
    let json = serde_json::json!({
        "instances": x.dim(0)?,
        "iterations": iterations,
        "tolerance": tol,
        "methods": summary,
    });
    write_atomic(
        &dir.join("fixed-point.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;

    let series = |f: &dyn Fn(&ResidualCurve) -> Vec<(f64, f64)>| -> Vec<(String, Vec<(f64, f64)>)> {
        curves.iter().map(|c| (c.name.clone(), f(c))).collect()
    };
    let mean = series(&|c| {
        c.mean
            .iter()
            .enumerate()
            .map(|(k, v)| (k as f64, *v))
            .collect()
    });
    let mut out = plots::curves(
        &fig_dir.join("residuals"),
        "Held-out instances: mean normalised residual ‖g(y) − y‖ / ‖g(0)‖",
        ("iteration", "normalised residual"),
        &mean,
        true,
    )?;
    let n = x.dim(0)?.max(1) as f64;
    let solved = series(&|c| {
        (0..=iterations)
            .map(|k| {
                let count = c
                    .iterations_to_tolerance
                    .iter()
                    .filter(|i| i.is_some_and(|i| i <= k))
                    .count();
                (k as f64, count as f64 / n)
            })
            .collect()
    });
    out.extend(plots::curves(
        &fig_dir.join("solved-fraction"),
        &format!("Fraction of instances with normalised residual ≤ {tol:e}"),
        ("iteration", "solved fraction"),
        &solved,
        false,
    )?);
    Ok(out)
}
