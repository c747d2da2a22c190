//! `amortize run rlqp`: learns RLQP's ADMM step-size policy (tutorial §6.4.5) by ES and compares
//! it with OSQP's adaptive ρ on held-out QPs of every class and size, in the same run.
//!
//! Writes into `<out>/<name>/`: `config.toml`, `policy/` (the learned θ), `training.csv`,
//! `rlqp.csv` and `rlqp.json` (per class and size: iterations, wall-clock per instance,
//! solved fractions and ratios), `report.md`, and figures.

use std::path::{Path, PathBuf};
use std::time::Instant;

use amortize::model::{FrozenRhoPolicy, RhoPolicyNet};
use amortize::solver::qp::{
    Admm, AdmmSettings, QpClass, QpProblem, QpSolution, QpStatus, RhoPolicy,
};
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
    /// Solves per QP and method for the wall-clock (default 3): the methods alternate and
    /// each QP's seconds are the median.
    pub timing_repeats: usize,
    /// Termination-check intervals at which both methods are timed (default [1, 5, 25]; 1
    /// must be among them). The iterates do not depend on the interval, only where a solve
    /// stops: iterations are counted at interval 1, and each method's time is that of its
    /// fastest interval among those that solve the same QPs as interval 1 ([`fastest`]).
    pub check_intervals: Vec<usize>,
}

impl Default for RlqpEval {
    fn default() -> Self {
        RlqpEval {
            classes: QpClass::ALL.to_vec(),
            sizes: vec![20, 50, 100, 200],
            instances: 20,
            export_qps: false,
            timing_repeats: 3,
            check_intervals: vec![1, 5, 25],
        }
    }
}

/// Parametric families in OSQP's update mode ([`Admm::solve_sequence`]): per class and size,
/// `families` families ([`QpClass::family`]: fixed P and A, a fresh parameter per QP) of
/// `instances` QPs each, solved one after another with one set-up per family, by OSQP's ρ
/// rule (ρ carried over from QP to QP) and by the learned ρ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlqpParametric {
    /// Classes compared (default all).
    pub classes: Vec<QpClass>,
    /// Sizes n compared (default [50, 100]).
    pub sizes: Vec<usize>,
    /// Families per class and size (default 2).
    pub families: usize,
    /// QPs per family (default 10).
    pub instances: usize,
}

impl Default for RlqpParametric {
    fn default() -> Self {
        RlqpParametric {
            classes: QpClass::ALL.to_vec(),
            sizes: vec![50, 100],
            families: 2,
            instances: 10,
        }
    }
}

/// Training settings of one class-specific policy that differ from `[rlqp]`'s
/// (`[[class_settings]]`, with `per_class = true`): the sizes it trains on and when ADMM
/// consults it. A class whose factorisations are dear can, for example, be given a policy that
/// sets ρ once, before the first iteration (`max_changes = 1`: one factorisation per solve).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSettings {
    /// The class whose policy these settings train.
    pub class: QpClass,
    /// Training sizes n (default `[rlqp] sizes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sizes: Option<Vec<usize>>,
    /// Iterations before the first scheduled consultation (default `[rlqp] interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<usize>,
    /// Changes of ρ after which the policy is no longer consulted, the start's included
    /// (default `[rlqp] max_changes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_changes: Option<usize>,
    /// Iterations one factorisation counts for in the training loss (default `[rlqp]
    /// refactor_cost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refactor_cost: Option<f64>,
}

impl ClassSettings {
    /// `base` (the experiment's `[rlqp]`) restricted to this class, with these settings.
    fn apply(&self, base: &RlqpConfig) -> RlqpConfig {
        RlqpConfig {
            classes: vec![self.class],
            sizes: self.sizes.clone().unwrap_or_else(|| base.sizes.clone()),
            interval: self.interval.unwrap_or(base.interval),
            max_changes: self.max_changes.or(base.max_changes),
            refactor_cost: self.refactor_cost.unwrap_or(base.refactor_cost),
            ..base.clone()
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
    /// A fully-amortized warm start for one parametric family (`class`, `size`), compared
    /// cold/warm with OSQP's and the learned ρ (optional; its seed follows the experiment's).
    #[serde(default)]
    pub warm_start: Option<QpWarmStartConfig>,
    /// Also train one policy per evaluated class, on that class alone with the same settings
    /// (unless `class_settings` gives it others),
    /// and compare it with OSQP's ρ on that class's held-out QPs (default false).
    #[serde(default)]
    pub per_class: bool,
    /// Also compare on parametric families in OSQP's update mode (optional).
    #[serde(default)]
    pub parametric: Option<RlqpParametric>,
    /// Per-class training settings of the class-specific policies (`per_class`); classes
    /// not listed train with `[rlqp]`'s.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_settings: Vec<ClassSettings>,
}

impl RlqpExperiment {
    /// The training settings of `class`'s class-specific policy.
    pub fn class_config(&self, class: QpClass) -> RlqpConfig {
        match self.class_settings.iter().find(|c| c.class == class) {
            Some(settings) => settings.apply(&self.rlqp),
            None => RlqpConfig {
                classes: vec![class],
                ..self.rlqp.clone()
            },
        }
    }
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
        || exp.eval.timing_repeats == 0
    {
        bail!(
            "eval: classes must be non-empty, sizes >= 2, instances >= 1 and timing_repeats >= 1"
        );
    }
    for (k, settings) in exp.class_settings.iter().enumerate() {
        let class = settings.class.name();
        if !exp.per_class {
            bail!("class_settings ({class}) needs per_class = true: they train class-specific policies");
        }
        if !exp.eval.classes.contains(&settings.class) {
            bail!("class_settings: {class} is not among eval.classes, so no policy of its own is trained");
        }
        if exp.class_settings[..k]
            .iter()
            .any(|c| c.class == settings.class)
        {
            bail!("class_settings: {class} is listed twice");
        }
        exp.class_config(settings.class)
            .validate()
            .with_context(|| format!("class_settings for {class}"))?;
    }
    exp.eval.check_intervals.sort_unstable();
    exp.eval.check_intervals.dedup();
    if exp.eval.check_intervals.first() != Some(&1) {
        bail!(
            "eval: check_intervals must include 1 (iterations are counted with termination \
             checked every iteration) and be >= 1, got {:?}",
            exp.eval.check_intervals
        );
    }
    if let Some(p) = &exp.parametric {
        if p.classes.is_empty()
            || p.sizes.iter().any(|n| *n < 2)
            || p.families == 0
            || p.instances == 0
        {
            bail!("parametric: classes must be non-empty, sizes >= 2, families >= 1 and instances >= 1");
        }
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
    /// Mean seconds per instance (set-up and solve), OSQP's rule at its fastest check
    /// interval (`osqp_check_every`).
    pub osqp_seconds: f64,
    /// The termination-check interval of OSQP's timed runs: of `[eval] check_intervals`, the
    /// fastest on average among those that solve the same QPs as interval 1 ([`fastest`]).
    pub osqp_check_every: usize,
    /// Mean seconds per instance (set-up and solve), learned policy at its fastest check
    /// interval (`learned_check_every`).
    pub learned_seconds: f64,
    /// The termination-check interval of the learned policy's timed runs (as for OSQP's).
    pub learned_check_every: usize,
    /// osqp_seconds / learned_seconds (> 1: the learned policy is faster).
    pub time_ratio: f64,
    /// Mean seconds per instance of the solve phase (numeric factorisations and iterations,
    /// without the ρ-independent set-up both methods share), OSQP's rule.
    pub osqp_solve_seconds: f64,
    /// The same, learned policy.
    pub learned_solve_seconds: f64,
    /// osqp_solve_seconds / learned_solve_seconds.
    pub solve_time_ratio: f64,
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
#[derive(Clone)]
struct Outcome {
    iters: f64,
    seconds: f64,
    /// The solve phase of `seconds`: without the ρ-independent set-up
    /// ([`QpSolution::setup_elapsed`]), by the solver's own clock.
    solve_seconds: f64,
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

/// One way of solving: ADMM settings and an optional ρ policy.
type Method<'a> = (AdmmSettings, Option<&'a dyn RhoPolicy>);

/// The outcomes of every unit of work (one QP, or one family solved in sequence) under each
/// of `methods`, one after another on this thread. Each unit is solved `repeats` times by
/// every method in turn (the methods alternate, so that both see the same machine
/// conditions); a QP's seconds are the median of its unit's times over the unit's QPs (its
/// solve-phase seconds likewise), and the iterations are those of the first repeat (every
/// repeat gives the same).
fn time_methods<U>(
    units: &[U],
    methods: &[Method<'_>],
    repeats: usize,
    solve: impl Fn(&Admm, usize, &U, Option<&dyn RhoPolicy>) -> amortize::Result<Vec<QpSolution>>,
) -> Result<Vec<Vec<Outcome>>> {
    let solvers = methods
        .iter()
        .map(|(settings, _)| Admm::new(*settings))
        .collect::<amortize::Result<Vec<_>>>()?;
    let mut outcomes: Vec<Vec<Outcome>> = methods.iter().map(|_| Vec::new()).collect();
    for (i, unit) in units.iter().enumerate() {
        let mut seconds = vec![Vec::with_capacity(repeats); methods.len()];
        let mut solve_seconds = seconds.clone();
        let mut first = Vec::with_capacity(methods.len());
        for r in 0..repeats.max(1) {
            for (k, (admm, (_, policy))) in solvers.iter().zip(methods).enumerate() {
                let t0 = Instant::now();
                let solutions = solve(admm, i, unit, *policy)?;
                seconds[k].push(t0.elapsed().as_secs_f64());
                solve_seconds[k].push(
                    solutions
                        .iter()
                        .map(|s| s.elapsed - s.setup_elapsed)
                        .sum::<f64>(),
                );
                if r == 0 {
                    first.push(solutions);
                }
            }
        }
        for (k, solutions) in first.into_iter().enumerate() {
            let count = solutions.len().max(1) as f64;
            let per_qp = crate::bench::median(std::mem::take(&mut seconds[k])) / count;
            let solve_per_qp = crate::bench::median(std::mem::take(&mut solve_seconds[k])) / count;
            outcomes[k].extend(solutions.iter().map(|s| Outcome {
                seconds: per_qp,
                solve_seconds: solve_per_qp,
                iters: s.iters as f64,
                solved: s.status == QpStatus::Solved,
                factorisations: s.factorisations as f64,
            }));
        }
    }
    Ok(outcomes)
}

/// [`time_methods`] on single QPs, from zero or from each QP's warm start.
fn solve_all(
    qps: &[QpProblem],
    methods: &[Method<'_>],
    warm: Option<&WarmStarts>,
    repeats: usize,
) -> Result<Vec<Vec<Outcome>>> {
    time_methods(qps, methods, repeats, |admm, i, qp, policy| {
        let start = warm.map(|w| (w[i].0.as_slice(), w[i].1.as_slice()));
        Ok(vec![admm.solve_with_policy(qp, start, policy)?])
    })
}

/// The methods every comparison times, two per termination-check interval of `intervals`
/// (ascending, the first 1): OSQP's ρ rule, then `policy` on its schedule. Only where a solve
/// stops depends on the interval (ρ is adapted and the policy consulted on their own
/// schedules, with residuals computed there whatever the interval), so interval 1 gives each
/// method's exact iteration count and the others can only be faster per iteration.
fn osqp_and<'a>(
    cfg: &RlqpConfig,
    policy: &'a dyn RhoPolicy,
    intervals: &[usize],
) -> Vec<Method<'a>> {
    let (osqp, learned) = (cfg.baseline_settings(), cfg.policy_settings());
    intervals
        .iter()
        .flat_map(|&check_every| {
            [
                (
                    AdmmSettings {
                        check_every,
                        ..osqp
                    },
                    None,
                ),
                (
                    AdmmSettings {
                        check_every,
                        ..learned
                    },
                    Some(policy),
                ),
            ]
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
    save_policy(&dir.join("policy"), &policy, cfg.schedule())?;
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
            let qps = held_out(exp, class, n)?;
            if exp.eval.export_qps {
                for qp in &qps {
                    exported.push_str(&qp_json(class, n, qp).to_string());
                    exported.push('\n');
                }
            }
            cells.push(compare(exp, &exp.rlqp, class, n, &qps, &frozen)?);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    if exp.eval.export_qps {
        write_atomic(&dir.join("qps.jsonl"), exported.as_bytes())?;
    }
    let per_class = match exp.per_class {
        true => Some(per_class_policies(exp, &dir, quiet)?),
        false => None,
    };
    let parametric = match &exp.parametric {
        Some(params) => Some(parametric_cells(
            exp,
            params,
            &frozen,
            per_class.as_ref(),
            quiet,
        )?),
        None => None,
    };

    let table = cells_csv(&cells);
    write_atomic(&dir.join("rlqp.csv"), table.as_bytes())?;
    if let Some(p) = &per_class {
        write_atomic(
            &dir.join("rlqp-per-class.csv"),
            cells_csv(&p.cells).as_bytes(),
        )?;
    }
    if let Some((shared, own)) = &parametric {
        write_atomic(
            &dir.join("rlqp-parametric.csv"),
            cells_csv(shared).as_bytes(),
        )?;
        if !own.is_empty() {
            write_atomic(
                &dir.join("rlqp-parametric-per-class.csv"),
                cells_csv(own).as_bytes(),
            )?;
        }
    }
    write_atomic(
        &dir.join("rlqp.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "train_seconds": train_seconds,
            "training": records.last(),
            "cells": cells,
            "per_class": per_class.as_ref().map(|p| serde_json::json!({
                "train_seconds": p.train_seconds,
                "cells": p.cells,
            })),
            "parametric": parametric.as_ref().map(|(shared, own)| serde_json::json!({
                "shared_policy": shared,
                "class_policies": own,
            })),
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
    // Per class, a ratio against n: iterations and wall-clock, for the shared policy and the
    // class-specific ones.
    let by_class = |cells: &[Cell], value: fn(&Cell) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        exp.eval
            .classes
            .iter()
            .map(|class| {
                let points = cells
                    .iter()
                    .filter(|c| c.class == *class)
                    .map(|c| (c.n as f64, value(c)))
                    .collect();
                (class.name().to_string(), points)
            })
            .collect()
    };
    let mut ratio_figures = vec![
        (
            "iteration-ratio",
            "Held-out QPs: ADMM iterations of OSQP's ρ over the learned ρ",
            "iterations ratio",
            by_class(&cells, |c| c.iteration_ratio),
        ),
        (
            "time-ratio",
            "Held-out QPs: wall-clock of OSQP's ρ over the learned ρ",
            "wall-clock ratio",
            by_class(&cells, |c| c.time_ratio),
        ),
    ];
    if let Some(PerClass {
        cells: class_cells, ..
    }) = &per_class
    {
        ratio_figures.push((
            "iteration-ratio-per-class",
            "Class-specific policies: iterations of OSQP's ρ over the learned ρ",
            "iterations ratio",
            by_class(class_cells, |c| c.iteration_ratio),
        ));
        ratio_figures.push((
            "time-ratio-per-class",
            "Class-specific policies: wall-clock of OSQP's ρ over the learned ρ",
            "wall-clock ratio",
            by_class(class_cells, |c| c.time_ratio),
        ));
    }
    if let Some((shared, own)) = &parametric {
        // The class-specific policies if they were trained, else the shared one.
        let (cells, title) = if own.is_empty() {
            (
                shared,
                "Parametric families in sequence: wall-clock of OSQP's ρ over the learned ρ",
            )
        } else {
            (
                own,
                "Parametric families in sequence: wall-clock of OSQP's ρ over the class-specific ρ",
            )
        };
        ratio_figures.push((
            "time-ratio-parametric",
            title,
            "wall-clock ratio",
            by_class(cells, |c| c.time_ratio),
        ));
    }
    for (file, title, y_label, series) in &ratio_figures {
        figures.extend(plots::curves(
            &dir.join("figures").join(file),
            title,
            ("size n", y_label),
            series,
            false,
        )?);
    }

    let mut md = format!(
        "# Run `{}`\n\nES training: {} updates of {} QPs ({} antithetic pairs) in {:.0} s.\n\n\
         Held-out QPs, {} per cell; s/QP is the mean over QPs of each QP's median of {} solves \
         (set-up and solve, one thread, the methods alternating). Both methods count their \
         iterations with termination checked every iteration, and both are timed at each \
         termination-check interval of {:?} (OSQP's default is 25; a longer one evaluates \
         residuals less often and may overshoot by a few iterations): each one's s/QP is \
         that of its fastest interval (in brackets). The time ratio after \
         set-up leaves out the set-up both methods pay alike (scaling, KKT assembly, ordering, \
         symbolic analysis): it compares the numeric factorisations and iterations, OSQP's \
         solve time plus its first factorisation.\n\n",
        exp.name,
        cfg.steps,
        cfg.batch,
        cfg.samples,
        train_seconds,
        exp.eval.instances,
        exp.eval.timing_repeats,
        exp.eval.check_intervals
    );
    md.push_str(&cells_markdown(&cells));
    if let Some(p) = &per_class {
        md.push_str(&format!(
            "\n## Class-specific policies\n\nOne policy per class, trained on that class alone \
             with the same settings ({} updates each; {:.0} s in all), on the same held-out QPs \
             (`policies/<class>/`, `rlqp-per-class.csv`){}:\n\n",
            cfg.steps,
            p.train_seconds,
            class_settings_text(&exp.class_settings)
        ));
        md.push_str(&cells_markdown(&p.cells));
    }
    if let (Some((shared, own)), Some(params)) = (&parametric, &exp.parametric) {
        md.push_str(&format!(
            "\n## Parametric families (OSQP's update mode)\n\n{} families of {} QPs per \
             class and size (fixed P and A, a fresh parameter per QP), each solved in sequence \
             with one set-up: OSQP's ρ carries over from QP to QP, the learned ρ is chosen at \
             each start and refactors only when it differs from the factor's. s/QP: the \
             family's median time over {} alternating runs, per QP (`rlqp-parametric.csv`).\n\n\
             Shared policy:\n\n",
            params.families, params.instances, exp.eval.timing_repeats
        ));
        md.push_str(&cells_markdown(shared));
        if !own.is_empty() {
            md.push_str("\nClass-specific policies (`rlqp-parametric-per-class.csv`):\n\n");
            md.push_str(&cells_markdown(own));
        }
    }
    if let Some(ws) = &exp.warm_start {
        md.push_str(&warm_start_section(
            ws, cfg, &frozen, &dir, &exp.eval, quiet,
        )?);
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

/// The report's words for `[[class_settings]]`: empty without any.
fn class_settings_text(settings: &[ClassSettings]) -> String {
    let described: Vec<String> = settings
        .iter()
        .map(|c| {
            let mut parts = Vec::new();
            if let Some(sizes) = &c.sizes {
                parts.push(format!("trained at n = {sizes:?}"));
            }
            if let Some(k) = c.interval {
                parts.push(format!("first consulted after {k} iterations"));
            }
            if let Some(k) = c.max_changes {
                parts.push(format!("at most {k} change(s) of ρ"));
            }
            if let Some(r) = c.refactor_cost {
                parts.push(format!("a factorisation counted as {r} iterations"));
            }
            format!("{}: {}", c.class.name(), parts.join(", "))
        })
        .collect();
    match described.is_empty() {
        true => String::new(),
        false => format!(", except ({})", described.join("; ")),
    }
}

/// The held-out QPs of one class and size (the same for every policy compared).
fn held_out(exp: &RlqpExperiment, class: QpClass, n: usize) -> Result<Vec<QpProblem>> {
    let mut rng = StdRng::seed_from_u64(exp.seed ^ 0xE7A1 ^ (n as u64) << 8);
    Ok((0..exp.eval.instances)
        .map(|_| class.generate(n, &mut rng))
        .collect::<amortize::Result<_>>()?)
}

/// OSQP's ρ rule against `policy` on `qps` (one class and size); `cfg` is the policy's
/// training settings (its schedule).
fn compare(
    exp: &RlqpExperiment,
    cfg: &RlqpConfig,
    class: QpClass,
    n: usize,
    qps: &[QpProblem],
    policy: &dyn RhoPolicy,
) -> Result<Cell> {
    let intervals = &exp.eval.check_intervals;
    let outcomes = solve_all(
        qps,
        &osqp_and(cfg, policy, intervals),
        None,
        exp.eval.timing_repeats,
    )?;
    Ok(cell(class, n, &outcomes, intervals))
}

/// A method's timed outcomes and their termination-check interval, from its outcomes at each
/// of `intervals` (the first at interval 1, the exact count): the interval with the least
/// mean time among those that solved exactly the QPs interval 1 solved (ties: the smaller
/// interval). The iterates are the same at every interval, but a solve checked less often
/// could end differently (an infeasibility test at an iteration the other skips); such an
/// interval is not a like-for-like solve and is left out. The choice is made on the times it
/// reports, for both methods alike.
fn fastest<'o>(runs: &[&'o [Outcome]], intervals: &[usize]) -> (&'o [Outcome], usize) {
    let seconds = |r: &Outcome| r.seconds;
    let same_solved = |run: &[Outcome]| run.iter().zip(runs[0]).all(|(a, b)| a.solved == b.solved);
    runs.iter()
        .zip(intervals)
        .filter(|(run, _)| same_solved(run))
        .fold((runs[0], intervals[0]), |best, (run, &k)| {
            match mean(run, seconds) < mean(best.0, seconds) {
                true => (*run, k),
                false => best,
            }
        })
}

/// The outcomes of [`osqp_and`]'s methods split into OSQP's and the policy's, one run per
/// check interval each.
fn split_methods(outcomes: &[Vec<Outcome>]) -> (Vec<&[Outcome]>, Vec<&[Outcome]>) {
    let osqp = outcomes.iter().step_by(2).map(Vec::as_slice).collect();
    let learned = outcomes
        .iter()
        .skip(1)
        .step_by(2)
        .map(Vec::as_slice)
        .collect();
    (osqp, learned)
}

/// The cell of OSQP's rule against a policy on the same QPs, from the outcomes of
/// [`osqp_and`]'s methods at `intervals`: iterations, solved fractions and factorisations
/// from the exact count (interval 1), each method's time from its fastest interval
/// ([`fastest`]).
fn cell(class: QpClass, n: usize, outcomes: &[Vec<Outcome>], intervals: &[usize]) -> Cell {
    let (osqp_runs, learned_runs) = split_methods(outcomes);
    let (base, learned) = (osqp_runs[0], learned_runs[0]);
    let k = base.len() as f64;
    let ratio = (base
        .iter()
        .zip(learned)
        .map(|(b, l)| (b.iters.max(1.0) / l.iters.max(1.0)).ln())
        .sum::<f64>()
        / k)
        .exp();
    let seconds = |r: &Outcome| r.seconds;
    let solve_seconds = |r: &Outcome| r.solve_seconds;
    let (osqp_timed, osqp_check_every) = fastest(&osqp_runs, intervals);
    let (learned_timed, learned_check_every) = fastest(&learned_runs, intervals);
    let (osqp_seconds, learned_seconds) = (mean(osqp_timed, seconds), mean(learned_timed, seconds));
    let (osqp_solve_seconds, learned_solve_seconds) = (
        mean(osqp_timed, solve_seconds),
        mean(learned_timed, solve_seconds),
    );
    Cell {
        class,
        n,
        osqp_iters: mean(base, |r| r.iters),
        learned_iters: mean(learned, |r| r.iters),
        iteration_ratio: ratio,
        osqp_seconds,
        osqp_check_every,
        learned_seconds,
        learned_check_every,
        time_ratio: osqp_seconds / learned_seconds,
        osqp_solve_seconds,
        learned_solve_seconds,
        solve_time_ratio: osqp_solve_seconds / learned_solve_seconds,
        osqp_solved: mean(base, solved),
        learned_solved: mean(learned, solved),
        osqp_factorisations: mean(base, |r| r.factorisations),
        learned_factorisations: mean(learned, |r| r.factorisations),
    }
}

/// The held-out families of one class and size ([`RlqpParametric`]), `instances` QPs each.
fn held_out_families(
    exp: &RlqpExperiment,
    params: &RlqpParametric,
    class: QpClass,
    n: usize,
) -> Result<Vec<Vec<QpProblem>>> {
    let mut rng = StdRng::seed_from_u64(exp.seed ^ 0xFA31 ^ (n as u64) << 8);
    (0..params.families)
        .map(|_| {
            let family = class.family(n, &mut rng)?;
            Ok((0..params.instances)
                .map(|_| family.instance(&mut rng))
                .collect::<amortize::Result<Vec<_>>>()?)
        })
        .collect()
}

/// OSQP's ρ rule against `policy` on parametric families, each solved in sequence
/// ([`Admm::solve_sequence`]: one set-up per family). Each family is solved `repeats` times
/// by both methods in turn; a QP's seconds are its family's median time over the QPs.
fn compare_parametric(
    exp: &RlqpExperiment,
    cfg: &RlqpConfig,
    class: QpClass,
    n: usize,
    families: &[Vec<QpProblem>],
    policy: &dyn RhoPolicy,
) -> Result<Cell> {
    let intervals = &exp.eval.check_intervals;
    let outcomes = time_methods(
        families,
        &osqp_and(cfg, policy, intervals),
        exp.eval.timing_repeats,
        |admm, _, qps, policy| admm.solve_sequence(qps, policy),
    )?;
    Ok(cell(class, n, &outcomes, intervals))
}

/// `per_class`: one policy per evaluated class, trained on that class alone, saved under
/// `policies/<class>/` and compared on that class's held-out QPs.
fn per_class_policies(exp: &RlqpExperiment, dir: &Path, quiet: bool) -> Result<PerClass> {
    let mut cells = Vec::new();
    let mut policies = Vec::new();
    let mut train_seconds = 0.0;
    for &class in &exp.eval.classes {
        let cfg = exp.class_config(class);
        let policy = RhoPolicyNet::new(
            cfg.policy.clone(),
            &mut StdRng::seed_from_u64(exp.seed),
            &Device::Cpu,
        )?;
        let bar = progress::bar(cfg.steps as u64, &format!("train {}", class.name()), quiet);
        let t0 = Instant::now();
        train_rho_policy(&policy, &cfg, |r| {
            bar.inc(1);
            bar.set_message(format!("speed-up on batch {:.2}", r.speedup));
        })?;
        bar.finish_and_clear();
        train_seconds += t0.elapsed().as_secs_f64();
        save_policy(
            &dir.join("policies").join(class.name()),
            &policy,
            cfg.schedule(),
        )?;
        let frozen = policy.frozen()?;
        for &n in &exp.eval.sizes {
            cells.push(compare(
                exp,
                &cfg,
                class,
                n,
                &held_out(exp, class, n)?,
                &frozen,
            )?);
        }
        policies.push((class, cfg, frozen));
    }
    Ok(PerClass {
        cells,
        train_seconds,
        policies,
    })
}

/// The outcome of `per_class`.
struct PerClass {
    /// The comparison on each class's held-out QPs.
    cells: Vec<Cell>,
    /// Training time of all the class-specific policies.
    train_seconds: f64,
    /// The trained policies, with their training settings.
    policies: Vec<(QpClass, RlqpConfig, FrozenRhoPolicy)>,
}

/// The `[parametric]` comparison: the shared policy's cells, and the class-specific
/// policies' when `per_class` trained them (classes without one are skipped there).
fn parametric_cells(
    exp: &RlqpExperiment,
    params: &RlqpParametric,
    shared: &dyn RhoPolicy,
    per_class: Option<&PerClass>,
    quiet: bool,
) -> Result<(Vec<Cell>, Vec<Cell>)> {
    let total = (params.classes.len() * params.sizes.len()) as u64;
    let bar = progress::bar(total, "families", quiet);
    let (mut cells, mut class_cells) = (Vec::new(), Vec::new());
    for &class in &params.classes {
        let own = per_class.and_then(|p| p.policies.iter().find(|(c, _, _)| *c == class));
        for &n in &params.sizes {
            let families = held_out_families(exp, params, class, n)?;
            cells.push(compare_parametric(
                exp, &exp.rlqp, class, n, &families, shared,
            )?);
            if let Some((_, cfg, policy)) = own {
                class_cells.push(compare_parametric(exp, cfg, class, n, &families, policy)?);
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok((cells, class_cells))
}

/// The cells as CSV.
fn cells_csv(cells: &[Cell]) -> String {
    let mut table = String::from(
        "class,n,osqp_iters,learned_iters,iteration_ratio,osqp_seconds,learned_seconds,time_ratio,osqp_solved,learned_solved,osqp_factorisations,learned_factorisations,osqp_solve_seconds,learned_solve_seconds,solve_time_ratio,osqp_check_every,learned_check_every\n",
    );
    for c in cells {
        table.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
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
            c.learned_factorisations,
            c.osqp_solve_seconds,
            c.learned_solve_seconds,
            c.solve_time_ratio,
            c.osqp_check_every,
            c.learned_check_every
        ));
    }
    table
}

/// The cells as a Markdown table.
fn cells_markdown(cells: &[Cell]) -> String {
    let mut md = String::from(
        "| class | n | OSQP ρ iters | learned iters | ratio | OSQP s/QP (check interval) | learned s/QP (check interval) | time ratio | time ratio after set-up | solved (OSQP / learned) | factorisations (OSQP / learned) |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for c in cells {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.2} | {:.2e} ({}) | {:.2e} ({}) | {:.2} | {:.2} | {:.0}% / {:.0}% | {:.1} / {:.1} |\n",
            c.class.name(),
            c.n,
            c.osqp_iters,
            c.learned_iters,
            c.iteration_ratio,
            c.osqp_seconds,
            c.osqp_check_every,
            c.learned_seconds,
            c.learned_check_every,
            c.time_ratio,
            c.solve_time_ratio,
            100.0 * c.osqp_solved,
            100.0 * c.learned_solved,
            c.osqp_factorisations,
            c.learned_factorisations
        ));
    }
    md
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
    /// The termination-check interval of the timed solves ([`fastest`]).
    check_every: usize,
}

/// Trains the warm-start model of `ws`, saves it under `warm-start/`, compares cold and warm
/// starts with OSQP's and the learned ρ on held-out members of its family (`warm-start.csv`)
/// and returns the report's section.
fn warm_start_section(
    ws: &QpWarmStartConfig,
    cfg: &RlqpConfig,
    policy: &dyn RhoPolicy,
    dir: &Path,
    eval: &RlqpEval,
    quiet: bool,
) -> Result<String> {
    let (repeats, intervals) = (eval.timing_repeats, &eval.check_intervals);
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
    let qps = ws.held_out_instances(&family)?;
    let t_predict = Instant::now();
    let predictions = model.predict(&qps)?;
    let predict_seconds = t_predict.elapsed().as_secs_f64() / qps.len() as f64;
    let mut rows = Vec::new();
    for (start, warm) in [("cold", false), ("warm", true)] {
        let outcomes = solve_all(
            &qps,
            &osqp_and(cfg, policy, intervals),
            warm.then_some(predictions.as_slice()),
            repeats,
        )?;
        let (osqp, learned) = split_methods(&outcomes);
        let predict = if warm { predict_seconds } else { 0.0 };
        for (rho, runs) in [("OSQP", osqp), ("learned", learned)] {
            let (timed, check_every) = fastest(&runs, intervals);
            rows.push(WarmStartRow {
                start,
                rho,
                iters: mean(runs[0], |r| r.iters),
                seconds: mean(timed, |r| r.seconds) + predict,
                solved: mean(runs[0], solved),
                check_every,
            });
        }
    }
    let mut csv = String::from("start,rho,iters,seconds,solved,check_every\n");
    for r in &rows {
        csv.push_str(&format!(
            "{},{},{},{},{},{}\n",
            r.start, r.rho, r.iters, r.seconds, r.solved, r.check_every
        ));
    }
    write_atomic(&dir.join("warm-start.csv"), csv.as_bytes())?;
    let mut md = format!(
        "\n## Warm start on a {} family (n = {}, {} variables, {} constraints)\n\n\
         An MLP from the {} entries of (q, l, u) that vary in the family to (y, λ), trained by \
         regression on {} labelled members ({} steps, {:.0} s, final batch loss {:.4}); {} \
         held-out members, eps 1e-3, iterations counted with termination checked every \
         iteration; each ρ timed at its fastest termination-check interval of {:?} (in \
         brackets), prediction time included in warm starts ({:.1e} s per QP).\n\n\
         | start | ρ | mean iterations | s/QP (check interval) | solved | iterations vs cold OSQP |\n|---|---|---|---|---|---|\n",
        ws.class.name(),
        ws.size,
        family.base().n(),
        family.base().m(),
        model.input_count(),
        ws.train_instances,
        ws.steps,
        train_seconds,
        records.last().map_or(f64::NAN, |r| r.loss),
        qps.len(),
        intervals,
        predict_seconds
    );
    let cold = rows[0].iters;
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {:.2e} ({}) | {:.0}% | {:.2}× |\n",
            r.start,
            r.rho,
            r.iters,
            r.seconds,
            r.check_every,
            100.0 * r.solved,
            cold / r.iters.max(1.0)
        ));
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(iters: f64, seconds: f64, solved: bool) -> Outcome {
        Outcome {
            iters,
            seconds,
            solve_seconds: seconds / 2.0,
            solved,
            factorisations: 1.0,
        }
    }

    /// Each method's time is its fastest check interval's, unless that one solved other QPs;
    /// the iterations are always the exact count (interval 1).
    #[test]
    fn a_cell_times_each_method_at_its_fastest_check_interval() {
        let intervals = [1, 5, 25];
        let osqp_exact = vec![outcome(40.0, 4.0, true), outcome(60.0, 6.0, true)];
        let learned_exact = vec![outcome(10.0, 2.0, true), outcome(20.0, 2.0, true)];
        let osqp_5 = vec![outcome(40.0, 4.5, true), outcome(60.0, 4.5, true)];
        let osqp_25 = vec![outcome(50.0, 3.0, true), outcome(75.0, 5.0, true)];
        let learned_5 = vec![outcome(10.0, 1.0, true), outcome(20.0, 2.0, true)];
        let learned_25 = vec![outcome(25.0, 1.0, true), outcome(25.0, 1.0, false)];
        let c = cell(
            QpClass::Lasso,
            5,
            &[
                osqp_exact.clone(),
                learned_exact.clone(),
                osqp_5,
                learned_5,
                osqp_25,
                learned_25,
            ],
            &intervals,
        );
        // OSQP: 25 is the fastest (4.0 s against 5.0 and 4.5). The learned ρ: 25 is faster
        // still but solved one QP fewer, so 5 (1.5 s against 2.0).
        assert_eq!((c.osqp_check_every, c.osqp_seconds), (25, 4.0));
        assert_eq!((c.learned_check_every, c.learned_seconds), (5, 1.5));
        assert_eq!((c.osqp_iters, c.learned_iters), (50.0, 15.0));
        assert_eq!(c.time_ratio, 4.0 / 1.5);
        assert_eq!(c.learned_solved, 1.0);
        // When no longer interval is faster, the exact runs are timed.
        let slower = vec![outcome(50.0, 5.0, true), outcome(75.0, 7.0, true)];
        let c = cell(
            QpClass::Lasso,
            5,
            &[osqp_exact, learned_exact, slower.clone(), slower],
            &intervals[..2],
        );
        assert_eq!((c.osqp_check_every, c.osqp_seconds), (1, 5.0));
        assert_eq!((c.learned_check_every, c.learned_seconds), (1, 2.0));
    }

    /// Δ = 0 everywhere (OSQP's rule through the policy hook).
    struct Zero;

    impl RhoPolicy for Zero {
        fn adjust(&self, _features: &[f64], m: usize) -> Vec<f64> {
            vec![0.0; m]
        }
    }

    /// `osqp_and` lays the methods out per interval, OSQP's rule then the policy, each with
    /// that interval and its own settings, and `split_methods` takes them apart in that
    /// order; `fastest` breaks a tie towards the smaller interval.
    #[test]
    fn methods_are_laid_out_and_split_per_interval() {
        let cfg = RlqpConfig {
            at_start: true,
            max_changes: Some(1),
            ..RlqpConfig::default()
        };
        let intervals = [1, 5, 25];
        let methods = osqp_and(&cfg, &Zero, &intervals);
        assert_eq!(methods.len(), 6);
        for (k, pair) in methods.chunks(2).enumerate() {
            let ((osqp, none), (learned, some)) = (&pair[0], &pair[1]);
            assert!(
                none.is_none() && some.is_some(),
                "interval {}",
                intervals[k]
            );
            assert_eq!(
                (osqp.check_every, learned.check_every),
                (intervals[k], intervals[k])
            );
            assert!(!osqp.policy_at_start);
            assert_eq!(
                (learned.policy_at_start, learned.policy_max_changes),
                (true, Some(1))
            );
        }
        // Outcomes tagged by their method's position come back split by method.
        let outcomes: Vec<Vec<Outcome>> =
            (0..6).map(|k| vec![outcome(k as f64, 1.0, true)]).collect();
        let (osqp, learned) = split_methods(&outcomes);
        let tags = |runs: &[&[Outcome]]| runs.iter().map(|r| r[0].iters).collect::<Vec<_>>();
        assert_eq!(
            (tags(&osqp), tags(&learned)),
            (vec![0.0, 2.0, 4.0], vec![1.0, 3.0, 5.0])
        );
        // Equal times: the smaller interval.
        assert_eq!(fastest(&osqp, &intervals).1, 1);
        let (a, b, c) = (
            vec![outcome(1.0, 3.0, true)],
            vec![outcome(1.0, 2.0, true)],
            vec![outcome(1.0, 2.0, true)],
        );
        assert_eq!(fastest(&[&a, &b, &c], &intervals).1, 5);
        // The same fraction solved, but not the same QP: not like for like.
        let exact = vec![outcome(1.0, 3.0, true), outcome(1.0, 3.0, false)];
        let swapped = vec![outcome(1.0, 1.0, false), outcome(1.0, 1.0, true)];
        assert_eq!(fastest(&[&exact, &swapped], &intervals[..2]).1, 1);
    }

    /// `[[class_settings]]` changes only its class's training settings, and is refused
    /// without `per_class`, for a class not evaluated, twice for one class, or with settings
    /// `[rlqp]` would refuse.
    #[test]
    fn class_settings_train_their_class_only() {
        let base = "name = \"t\"\nper_class = true\n[rlqp]\nsizes = [10]\nmax_iters = 100\n\
                    [eval]\nclasses = [\"lasso\", \"svm\"]\n";
        let dir = amortize::testing::ScratchDir::new("rlqp-class-settings").unwrap();
        let path = dir.join("rlqp.toml");
        let load_text = |text: &str| {
            std::fs::write(&path, text).unwrap();
            load(path.to_str().unwrap(), None, None)
        };
        let exp = load_text(&format!(
            "{base}[[class_settings]]\nclass = \"lasso\"\nsizes = [20, 50]\nmax_changes = 1\n"
        ))
        .unwrap();
        let lasso = exp.class_config(QpClass::Lasso);
        assert_eq!(lasso.classes, vec![QpClass::Lasso]);
        assert_eq!(
            (lasso.sizes.clone(), lasso.max_changes),
            (vec![20, 50], Some(1))
        );
        assert_eq!(lasso.interval, exp.rlqp.interval);
        let svm = exp.class_config(QpClass::Svm);
        assert_eq!(svm.classes, vec![QpClass::Svm]);
        assert_eq!(
            (svm.sizes, svm.max_changes),
            (vec![10], exp.rlqp.max_changes)
        );
        for (extra, needle) in [
            (
                "[[class_settings]]\nclass = \"control\"\n",
                "not among eval.classes",
            ),
            (
                "[[class_settings]]\nclass = \"svm\"\n[[class_settings]]\nclass = \"svm\"\n",
                "twice",
            ),
            (
                "[[class_settings]]\nclass = \"svm\"\nsizes = []\n",
                "class_settings for svm",
            ),
            (
                "[[class_settings]]\nclass = \"svm\"\ninterval = 60\n",
                "class_settings for svm",
            ),
        ] {
            let e = format!("{:#}", load_text(&format!("{base}{extra}")).unwrap_err());
            assert!(e.contains(needle), "{extra}: {e}");
        }
        let without = base.replace("per_class = true\n", "");
        let e = load_text(&format!("{without}[[class_settings]]\nclass = \"svm\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("per_class"), "{e}");
    }
}
