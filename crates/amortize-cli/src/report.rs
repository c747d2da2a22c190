//! `report.json` and `report.md` of a run folder.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use amortize::eval::SpeedReport;
use amortize::train::{write_atomic, TrainSummary};
use anyhow::Result;

use crate::commands::EvalOutcome;
use crate::experiment::Experiment;

/// The speed report without the long curves (for printing).
pub fn speed_summary(speed: Option<&SpeedReport>) -> serde_json::Value {
    let Some(s) = speed else {
        return serde_json::Value::Null;
    };
    serde_json::json!({
        "batch": s.batch,
        "prediction_seconds": s.prediction_seconds,
        "amortized_mean_objective": s.amortized_mean_objective,
        "baselines": s.baselines.iter().map(|b| serde_json::json!({
            "name": b.name,
            "iters_to_match": b.iters_to_match,
            "seconds_to_match": b.seconds_to_match,
            "final_mean_objective": b.final_mean_objective,
            "speed_ratio": b.speed_ratio,
            "ratio_is_lower_bound": b.ratio_is_lower_bound,
        })).collect::<Vec<_>>(),
    })
}

/// Writes both reports into `dir`.
pub fn write(
    dir: &Path,
    exp: &Experiment,
    summary: &TrainSummary,
    train_seconds: f64,
    outcome: &EvalOutcome,
    figures: &[PathBuf],
) -> Result<()> {
    let rel: Vec<String> = figures
        .iter()
        .map(|p| p.strip_prefix(dir).unwrap_or(p).display().to_string())
        .collect();
    let json = serde_json::json!({
        "experiment": exp,
        "train": summary,
        "train_seconds": train_seconds,
        "gap": outcome.gap,
        "speed": outcome.speed,
        "figures": rel,
    });
    write_atomic(
        &dir.join("report.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;

    let mut md = String::new();
    writeln!(md, "# Run `{}`\n", exp.name)?;
    writeln!(
        md,
        "Problem `{}`, model `{:?}`, {} steps at batch {} in {:.1} s (loss {:?}).\n",
        exp.problem.name(),
        exp.model,
        summary.steps,
        exp.train.batch_size,
        train_seconds,
        exp.train.loss
    )?;
    if let Some(g) = &outcome.gap {
        writeln!(md, "## Amortization gap ({} held-out contexts)\n", g.n)?;
        writeln!(md, "| mean f(ŷ) | mean f(y*) | mean gap | median | p90 | p99 | max | within {} | mean residual |", g.tolerance)?;
        writeln!(md, "|---|---|---|---|---|---|---|---|---|")?;
        let q = &g.gap_quantiles;
        writeln!(
            md,
            "| {:.5} | {:.5} | {:.5} | {:.2e} | {:.2e} | {:.2e} | {:.2e} | {:.1}% | {:.2e} |\n",
            g.mean_objective,
            g.mean_optimum,
            g.mean_gap,
            q.p50,
            q.p90,
            q.p99,
            q.max,
            100.0 * g.fraction_within_tolerance,
            g.mean_residual
        )?;
    } else {
        writeln!(
            md,
            "Held-out mean objective: {:.5} (no exact solver, so no gap).\n",
            summary.final_eval_objective
        )?;
    }
    if let Some(s) = &outcome.speed {
        writeln!(md, "## Speed at equal quality (batch of {})\n", s.batch)?;
        writeln!(
            md,
            "One batched prediction takes {:.3} ms and reaches mean objective {:.5}.\n",
            s.prediction_seconds * 1e3,
            s.amortized_mean_objective
        )?;
        writeln!(md, "| baseline | iterations to match | seconds to match | final mean objective | speed ratio |")?;
        writeln!(md, "|---|---|---|---|---|")?;
        for b in &s.baselines {
            let it = b
                .iters_to_match
                .map_or("never".to_string(), |i| i.to_string());
            let sec = b
                .seconds_to_match
                .map_or("—".to_string(), |t| format!("{t:.4}"));
            let ratio = if b.ratio_is_lower_bound {
                format!("> {:.0}×", b.speed_ratio)
            } else {
                format!("{:.0}×", b.speed_ratio)
            };
            writeln!(
                md,
                "| {} | {it} | {sec} | {:.5} | {ratio} |",
                b.name, b.final_mean_objective
            )?;
        }
        writeln!(md)?;
    }
    if !rel.is_empty() {
        writeln!(md, "## Figures\n")?;
        for r in rel.iter().filter(|r| r.ends_with(".png")) {
            writeln!(md, "![{r}]({r})")?;
        }
    }
    write_atomic(&dir.join("report.md"), md.as_bytes())?;
    Ok(())
}
