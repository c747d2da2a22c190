//! `amortize run rlqp`: learns RLQP's ADMM step-size policy (tutorial §6.4.5) by ES and compares
//! it with OSQP's adaptive ρ on held-out QPs of every class and size, in the same run.
//!
//! Writes into `<out>/<name>/`: `config.toml`, `policy/` (the learned θ), `training.csv`,
//! `rlqp.csv` and `rlqp.json` (per class and size: iterations, wall-clock per instance,
//! solved fractions and ratios), `report.md`, and figures.

use std::path::{Path, PathBuf};
use std::time::Instant;

use amortize::model::RhoPolicyNet;
use amortize::solver::qp::{Admm, AdmmSettings, QpClass, QpProblem, QpStatus, RhoPolicy};
use amortize::train::{
    save_policy, train_rho_policy, write_atomic, QpWarmStart, QpWarmStartConfig, RlqpConfig,
};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::{plots, progress};

/// The held-out comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlqpEval {
    /// Classes compared (default all).
    pub classes: Vec<QpClass>,
    /// Sizes n compared (default [20, 50, 100, 200]).
    pub sizes: Vec<usize>,
    /// QPs per class and size (default 20).
    pub instances: usize,
    /// Also write the held-out QPs to `qps.jsonl` (sparse triplets, one QP per line) for
    /// `bench/baselines/osqp_classes.py`, the OSQP C solver on the same QPs (default false).
    pub export_qps: bool,
}

impl Default for RlqpEval {
    fn default() -> Self {
        RlqpEval {
            classes: QpClass::ALL.to_vec(),
            sizes: vec![20, 50, 100, 200],
            instances: 20,
            export_qps: false,
        }
    }
}

/// An RLQP experiment file: `name`, `seed`, `[rlqp]` (training) and `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlqpExperiment {
    /// Name of the run folder.
    pub name: String,
    /// Seed (default 0); overrides `rlqp.seed`.
    #[serde(default)]
    pub seed: u64,
    /// Training settings.
    #[serde(default)]
    pub rlqp: RlqpConfig,
    /// Held-out comparison settings.
    #[serde(default)]
    pub eval: RlqpEval,
    /// A fully-amortized warm start for one MPC family, compared cold/warm with OSQP's and the
    /// learned ρ (optional; its seed follows the experiment's).
    #[serde(default)]
    pub warm_start: Option<QpWarmStartConfig>,
}

/// The built-in RLQP experiment.
pub const RLQP_TOML: &str = include_str!("../../../configs/rlqp.toml");

/// Whether `spec` names an RLQP experiment: the built-in `rlqp`, or a TOML file with an
/// `[rlqp]` table.
pub fn is_rlqp(spec: &str) -> bool {
    if spec == "rlqp" {
        return true;
    }
    let path = Path::new(spec);
    path.extension().is_some_and(|e| e == "toml")
        && std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .is_some_and(|t| t.contains_key("rlqp"))
}

/// Reads the experiment named by `spec`, with optional overrides.
pub fn load(spec: &str, seed: Option<u64>, steps: Option<usize>) -> Result<RlqpExperiment> {
    let (text, origin) = if spec == "rlqp" {
        (RLQP_TOML.to_string(), "built-in rlqp".to_string())
    } else {
        (
            std::fs::read_to_string(spec).with_context(|| format!("cannot read {spec}"))?,
            spec.to_string(),
        )
    };
    let mut exp: RlqpExperiment = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{origin}: malformed RLQP experiment: {}", e.message()))?;
    if let Some(s) = seed {
        exp.seed = s;
    }
    if let Some(ws) = exp.warm_start.as_mut() {
        ws.seed = exp.seed;
        ws.validate()?;
    }
    if let Some(s) = steps {
        exp.rlqp.steps = s;
    }
    exp.rlqp.seed = exp.seed;
    exp.rlqp.validate()?;
    if exp.eval.classes.is_empty()
        || exp.eval.sizes.iter().any(|n| *n < 2)
        || exp.eval.instances == 0
    {
        bail!("eval: classes must be non-empty, sizes >= 2 and instances >= 1");
    }
    Ok(exp)
}

/// One cell of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// QP class.
    pub class: QpClass,
    /// Size n.
    pub n: usize,
    /// Mean ADMM iterations with OSQP's adaptive ρ.
    pub osqp_iters: f64,
    /// Mean ADMM iterations with the learned policy.
    pub learned_iters: f64,
    /// Geometric mean over instances of N_OSQP / N_learned.
    pub iteration_ratio: f64,
    /// Mean seconds per instance (set-up and solve), OSQP's rule.
    pub osqp_seconds: f64,
    /// Mean seconds per instance (set-up and solve), learned policy.
    pub learned_seconds: f64,
    /// osqp_seconds / learned_seconds (> 1: the learned policy is faster).
    pub time_ratio: f64,
    /// Fraction solved to eps 1e-3, OSQP's rule.
    pub osqp_solved: f64,
    /// Fraction solved to eps 1e-3, learned policy.
    pub learned_solved: f64,
    /// Mean numeric KKT factorisations per solve (the first included), OSQP's rule.
    pub osqp_factorisations: f64,
    /// Mean numeric KKT factorisations per solve, learned policy.
    pub learned_factorisations: f64,
}

/// One solve's outcome.
struct Outcome {
    iters: f64,
    seconds: f64,
    solved: bool,
    factorisations: f64,
}

/// The mean of `f` over `outcomes`.
fn mean(outcomes: &[Outcome], f: impl Fn(&Outcome) -> f64) -> f64 {
    outcomes.iter().map(f).sum::<f64>() / outcomes.len() as f64
}

/// 1 for a solved QP, else 0 (its mean is the solved fraction).
fn solved(r: &Outcome) -> f64 {
    f64::from(u8::from(r.solved))
}

/// A warm start (y, λ) per QP.
type WarmStarts = [(Vec<f64>, Vec<f64>)];

/// The outcome of every QP, solved one after another on this thread, from zero or from its
/// warm start.
fn solve_all(
    qps: &[QpProblem],
    settings: AdmmSettings,
    policy: Option<&dyn RhoPolicy>,
    warm: Option<&WarmStarts>,
) -> Result<Vec<Outcome>> {
    let admm = Admm::new(settings)?;
    qps.iter()
        .enumerate()
        .map(|(i, qp)| {
            let start = warm.map(|w| (w[i].0.as_slice(), w[i].1.as_slice()));
            let t0 = Instant::now();
            let s = admm.solve_with_policy(qp, start, policy)?;
            Ok(Outcome {
                seconds: t0.elapsed().as_secs_f64(),
                iters: s.iters as f64,
                solved: s.status == QpStatus::Solved,
                factorisations: s.factorisations as f64,
            })
        })
        .collect()
}

/// Trains, saves and compares; returns the run folder.
pub fn run(exp: &RlqpExperiment, out: &Path, quiet: bool) -> Result<PathBuf> {
    let dir = out.join(&exp.name);
    std::fs::create_dir_all(dir.join("figures"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    write_atomic(&dir.join("config.toml"), toml::to_string(exp)?.as_bytes())?;
    let cfg = &exp.rlqp;
    let policy = RhoPolicyNet::new(
        cfg.policy.clone(),
        &mut StdRng::seed_from_u64(exp.seed),
        &Device::Cpu,
    )?;
    let bar = progress::bar(cfg.steps as u64, "train", quiet);
    let t0 = Instant::now();
    let records = train_rho_policy(&policy, cfg, |r| {
        bar.inc(1);
        bar.set_message(format!("speed-up on batch {:.2}", r.speedup));
    })?;
    bar.finish_and_clear();
    let train_seconds = t0.elapsed().as_secs_f64();
    save_policy(&dir.join("policy"), &policy)?;
    let mut csv = String::from("step,loss,speedup\n");
    for r in &records {
        csv.push_str(&format!("{},{},{}\n", r.step, r.loss, r.speedup));
    }
    write_atomic(&dir.join("training.csv"), csv.as_bytes())?;

    let frozen = policy.frozen()?;
    let cells_total = (exp.eval.classes.len() * exp.eval.sizes.len()) as u64;
    let bar = progress::bar(cells_total, "compare", quiet);
    let mut cells = Vec::new();
    let mut exported = String::new();
    for &class in &exp.eval.classes {
        for &n in &exp.eval.sizes {
            let mut rng = StdRng::seed_from_u64(exp.seed ^ 0xE7A1 ^ (n as u64) << 8);
            let qps: Vec<QpProblem> = (0..exp.eval.instances)
                .map(|_| class.generate(n, &mut rng))
                .collect::<amortize::Result<_>>()?;
            if exp.eval.export_qps {
                for qp in &qps {
                    exported.push_str(&qp_json(class, n, qp).to_string());
                    exported.push('\n');
                }
            }
            let base = solve_all(&qps, cfg.baseline_settings(), None, None)?;
            let learned = solve_all(&qps, cfg.policy_settings(), Some(&frozen), None)?;
            let k = qps.len() as f64;
            let ratio = (base
                .iter()
                .zip(&learned)
                .map(|(b, l)| (b.iters.max(1.0) / l.iters.max(1.0)).ln())
                .sum::<f64>()
                / k)
                .exp();
            let seconds = |r: &Outcome| r.seconds;
            let (osqp_seconds, learned_seconds) = (mean(&base, seconds), mean(&learned, seconds));
            cells.push(Cell {
                class,
                n,
                osqp_iters: mean(&base, |r| r.iters),
                learned_iters: mean(&learned, |r| r.iters),
                iteration_ratio: ratio,
                osqp_seconds,
                learned_seconds,
                time_ratio: osqp_seconds / learned_seconds,
                osqp_solved: mean(&base, solved),
                learned_solved: mean(&learned, solved),
                osqp_factorisations: mean(&base, |r| r.factorisations),
                learned_factorisations: mean(&learned, |r| r.factorisations),
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    if exp.eval.export_qps {
        write_atomic(&dir.join("qps.jsonl"), exported.as_bytes())?;
    }

    let mut table = String::from(
        "class,n,osqp_iters,learned_iters,iteration_ratio,osqp_seconds,learned_seconds,time_ratio,osqp_solved,learned_solved,osqp_factorisations,learned_factorisations\n",
    );
    for c in &cells {
        table.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            c.class.name(),
            c.n,
            c.osqp_iters,
            c.learned_iters,
            c.iteration_ratio,
            c.osqp_seconds,
            c.learned_seconds,
            c.time_ratio,
            c.osqp_solved,
            c.learned_solved,
            c.osqp_factorisations,
            c.learned_factorisations
        ));
    }
    write_atomic(&dir.join("rlqp.csv"), table.as_bytes())?;
    write_atomic(
        &dir.join("rlqp.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "train_seconds": train_seconds,
            "training": records.last(),
            "cells": cells,
        }))?
        .as_bytes(),
    )?;

    let mut figures = plots::curves(
        &dir.join("figures").join("training"),
        "RLQP training: geometric-mean speed-up over OSQP's ρ on each batch",
        ("ES update", "iterations ratio N_OSQP / N_learned"),
        &[(
            "batch speed-up".to_string(),
            records.iter().map(|r| (r.step as f64, r.speedup)).collect(),
        )],
        false,
    )?;
    let series: Vec<(String, Vec<(f64, f64)>)> = exp
        .eval
        .classes
        .iter()
        .map(|class| {
            (
                class.name().to_string(),
                cells
                    .iter()
                    .filter(|c| c.class == *class)
                    .map(|c| (c.n as f64, c.iteration_ratio))
                    .collect(),
            )
        })
        .collect();
    figures.extend(plots::curves(
        &dir.join("figures").join("iteration-ratio"),
        "Held-out QPs: ADMM iterations of OSQP's ρ over the learned ρ",
        ("size n", "iterations ratio"),
        &series,
        false,
    )?);

    let mut md = format!(
        "# Run `{}`\n\nES training: {} updates of {} QPs ({} antithetic pairs) in {:.0} s.\n\n\
         | class | n | OSQP ρ iters | learned iters | ratio | OSQP s/QP | learned s/QP | time ratio | solved (OSQP / learned) | factorisations (OSQP / learned) |\n|---|---|---|---|---|---|---|---|---|---|\n",
        exp.name, cfg.steps, cfg.batch, cfg.samples, train_seconds
    );
    for c in &cells {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.2} | {:.2e} | {:.2e} | {:.2} | {:.0}% / {:.0}% | {:.1} / {:.1} |\n",
            c.class.name(),
            c.n,
            c.osqp_iters,
            c.learned_iters,
            c.iteration_ratio,
            c.osqp_seconds,
            c.learned_seconds,
            c.time_ratio,
            100.0 * c.osqp_solved,
            100.0 * c.learned_solved,
            c.osqp_factorisations,
            c.learned_factorisations
        ));
    }
    if let Some(ws) = &exp.warm_start {
        md.push_str(&warm_start_section(ws, cfg, &frozen, &dir, quiet)?);
    }
    md.push_str("\n## Figures\n\n");
    for f in &figures {
        let rel = f.strip_prefix(&dir).unwrap_or(f).display().to_string();
        if rel.ends_with(".png") {
            md.push_str(&format!("![{rel}]({rel})\n"));
        }
    }
    write_atomic(&dir.join("report.md"), md.as_bytes())?;
    Ok(dir)
}

/// A QP as one JSON object with sparse triplets (infinite bounds as null).
fn qp_json(class: QpClass, n: usize, qp: &QpProblem) -> serde_json::Value {
    let triplets = |m: &amortize::linalg::CsrMatrix| -> Vec<(usize, usize, f64)> {
        (0..m.rows())
            .flat_map(|r| m.row(r).map(move |(c, v)| (r, c, v)))
            .collect()
    };
    let bound = |v: &f64| if v.is_finite() { Some(*v) } else { None };
    serde_json::json!({
        "class": class.name(),
        "n": n,
        "vars": qp.n(),
        "rows": qp.m(),
        "P": triplets(qp.p()),
        "q": qp.q(),
        "A": triplets(qp.a()),
        "l": qp.l().iter().map(bound).collect::<Vec<_>>(),
        "u": qp.u().iter().map(bound).collect::<Vec<_>>(),
    })
}

/// One row of the warm-start comparison.
#[derive(Debug, Clone, Serialize)]
struct WarmStartRow {
    start: &'static str,
    rho: &'static str,
    iters: f64,
    seconds: f64,
    solved: f64,
}

/// Trains the warm-start model of `ws`, saves it under `warm-start/`, compares cold and warm
/// starts with OSQP's and the learned ρ on held-out initial states (`warm-start.csv`) and
/// returns the report's section.
fn warm_start_section(
    ws: &QpWarmStartConfig,
    cfg: &RlqpConfig,
    policy: &dyn RhoPolicy,
    dir: &Path,
    quiet: bool,
) -> Result<String> {
    let bar = progress::bar(ws.steps as u64, "warm start", quiet);
    let t0 = Instant::now();
    let (model, records) = QpWarmStart::train(ws, |r| {
        bar.inc(1);
        bar.set_message(format!("loss {:.4}", r.loss));
    })?;
    bar.finish_and_clear();
    let train_seconds = t0.elapsed().as_secs_f64();
    model.save(&dir.join("warm-start"))?;
    let family = ws.family()?;
    let x0s = ws.held_out_states(&family);
    let qps: Vec<QpProblem> = x0s
        .iter()
        .map(|x0| family.instance(x0))
        .collect::<amortize::Result<_>>()?;
    let t_predict = Instant::now();
    let predictions = model.predict(&x0s)?;
    let predict_seconds = t_predict.elapsed().as_secs_f64() / x0s.len() as f64;
    let mut rows = Vec::new();
    for (start, warm) in [("cold", false), ("warm", true)] {
        for (rho, settings, policy) in [
            ("OSQP", cfg.baseline_settings(), None),
            ("learned", cfg.policy_settings(), Some(policy)),
        ] {
            let outcomes = solve_all(
                &qps,
                settings,
                policy,
                warm.then_some(predictions.as_slice()),
            )?;
            let predict = if warm { predict_seconds } else { 0.0 };
            rows.push(WarmStartRow {
                start,
                rho,
                iters: mean(&outcomes, |r| r.iters),
                seconds: mean(&outcomes, |r| r.seconds) + predict,
                solved: mean(&outcomes, solved),
            });
        }
    }
    let mut csv = String::from("start,rho,iters,seconds,solved\n");
    for r in &rows {
        csv.push_str(&format!(
            "{},{},{},{},{}\n",
            r.start, r.rho, r.iters, r.seconds, r.solved
        ));
    }
    write_atomic(&dir.join("warm-start.csv"), csv.as_bytes())?;
    let mut md = format!(
        "\n## Warm start on MPC (n_x = {}, {} variables, {} constraints)\n\n\
         An MLP x₀ ↦ (y, λ) trained by regression on {} labelled initial states ({} steps, {:.0} s, \
         final batch loss {:.4}); {} held-out initial states, eps 1e-3, termination checked every \
         iteration, prediction time included in warm starts ({:.1e} s per state).\n\n\
         | start | ρ | mean iterations | s/QP | solved | iterations vs cold OSQP |\n|---|---|---|---|---|---|\n",
        family.states(),
        family.variables(),
        family.constraints(),
        ws.train_instances,
        ws.steps,
        train_seconds,
        records.last().map_or(f64::NAN, |r| r.loss),
        x0s.len(),
        predict_seconds
    );
    let cold = rows[0].iters;
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {:.2e} | {:.0}% | {:.2}× |\n",
            r.start,
            r.rho,
            r.iters,
            r.seconds,
            100.0 * r.solved,
            cold / r.iters.max(1.0)
        ));
    }
    Ok(md)
}
