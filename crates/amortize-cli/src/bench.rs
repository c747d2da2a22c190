//! `amortize bench`: benchmarks that print tables of medians and ratios.
//!
//! `train-step` times one training step of the sphere MLP 16-128-128-3 (objective loss, Adam,
//! f32, one thread) on three implementations in one process: candle's composite ops with
//! autodiff (the path that keeps second-order gradients), the fused hand-written gemm path
//! (the product's fast path and the hardware reference), and the PyTorch (eager) and JAX (jit)
//! scripts of `bench/baselines/` when their packages are installed.

use std::path::Path;
use std::process::Command;

use amortize::eval::time_median;
use amortize::model::{FusedMlp, Mlp, MlpConfig, Model};
use amortize::problem::{Problem, Sphere, SphereConfig};
use amortize::train::{composite_step, TrainConfig};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The benchmarks.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Which {
    /// Time per training step of the sphere MLP.
    TrainStep,
    /// Classical solvers: per-solver table, Lasso vs JAX, random QPs vs OSQP.
    Solvers,
    /// Meta-gradient time and peak memory against inner steps: MAML, FOMAML, iMAML.
    Meta,
}

/// One row of the table.
struct Row {
    batch: usize,
    composite: f64,
    fused: f64,
    torch: Option<f64>,
    jax: Option<f64>,
}

/// Runs a benchmark and prints its table.
pub fn run(
    which: Which,
    batches: &[usize],
    repeats: usize,
    rounds: usize,
    qp_instances: usize,
    part: Option<&str>,
    baselines: bool,
    quiet: bool,
) -> Result<()> {
    match which {
        Which::TrainStep => train_step(batches, repeats, rounds, baselines, quiet),
        Which::Solvers => {
            crate::bench_solvers::run(repeats, rounds, qp_instances, part, baselines, quiet)
        }
        Which::Meta => crate::bench_meta::run(repeats),
    }
}

/// The median of a non-empty list.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn train_step(
    batches: &[usize],
    repeats: usize,
    rounds: usize,
    baselines: bool,
    quiet: bool,
) -> Result<()> {
    if batches.is_empty() || batches.contains(&0) {
        bail!("--batches must list positive batch sizes");
    }
    let sphere = Sphere::new(SphereConfig::default())?;
    let cfg = TrainConfig {
        learning_rate: 1e-3,
        ..Default::default()
    };
    // Rounds alternate between the Python baselines and ours, so that a slow spell of a
    // shared machine hits every implementation alike; each cell is the median over rounds.
    let mut python: Vec<(String, usize, f64)> = Vec::new();
    let mut ours: Vec<(usize, f64, f64)> = Vec::new();
    let bar = crate::progress::bar((rounds * batches.len()) as u64, "bench", quiet);
    for _ in 0..rounds.max(1) {
        if baselines {
            python.extend(python_results(batches, repeats));
        }
        for &batch in batches {
            let x = sphere.sample_contexts(batch, &mut StdRng::seed_from_u64(0), &Device::Cpu)?;
            let mlp = Mlp::new(
                MlpConfig::default(),
                16,
                3,
                &mut StdRng::seed_from_u64(0),
                &Device::Cpu,
            )?;
            let vars: Vec<candle_core::Var> = mlp.params().vars().cloned().collect();
            let tensors: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
            let mut state = cfg.adam.init(&tensors)?;
            let composite = time_median(repeats, || {
                composite_step(
                    &mlp, &sphere, &cfg, &vars, &mut state, &x, None, 1e-3, None, 0.0,
                )
                .map(|_| ())
            })?;
            let mut fused_mlp = FusedMlp::from_mlp(&mlp)?;
            let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let fused = time_median(repeats, || {
                fused_mlp
                    .train_step(&xs, batch, &sphere, &cfg.adam, 1e-3, None)
                    .map(|_| ())
            })?;
            ours.push((batch, composite, fused));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let rows: Vec<Row> = batches
        .iter()
        .map(|&batch| {
            let mine = |pick: fn(&(usize, f64, f64)) -> f64| {
                median(ours.iter().filter(|o| o.0 == batch).map(pick).collect())
            };
            let theirs = |fw: &str| {
                let v: Vec<f64> = python
                    .iter()
                    .filter(|(f, b, _)| f == fw && *b == batch)
                    .map(|(_, _, s)| *s)
                    .collect();
                (!v.is_empty()).then(|| median(v))
            };
            Row {
                batch,
                composite: mine(|o| o.1),
                fused: mine(|o| o.2),
                torch: theirs("torch"),
                jax: theirs("jax"),
            }
        })
        .collect();
    println!(
        "train-step: sphere MLP 16-128-128-3, objective loss, Adam, f32, one thread; median of {repeats} steps, then median over {rounds} alternating rounds"
    );
    print_table(&rows);
    Ok(())
}

pub(crate) fn fmt_time(s: Option<f64>) -> String {
    match s {
        None => "—".into(),
        Some(s) if s < 1e-3 => format!("{:.1} µs", s * 1e6),
        Some(s) => format!("{:.2} ms", s * 1e3),
    }
}

pub(crate) fn ratio(a: f64, b: Option<f64>) -> String {
    b.map_or("—".into(), |b| format!("{:.2}×", a / b))
}

fn print_table(rows: &[Row]) {
    println!(
        "| batch | candle composite | fused (gemm) | PyTorch eager | JAX jit | fused / JAX | composite / JAX | fused / PyTorch |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.batch,
            fmt_time(Some(r.composite)),
            fmt_time(Some(r.fused)),
            fmt_time(r.torch),
            fmt_time(r.jax),
            ratio(r.fused, r.jax),
            ratio(r.composite, r.jax),
            ratio(r.fused, r.torch),
        );
    }
    println!("(ratios are time / time: below 1 means ours is faster)");
}

/// Runs the Python baselines; returns (framework, batch, median seconds). A missing script,
/// interpreter or package is reported and skipped.
fn python_results(batches: &[usize], repeats: usize) -> Vec<(String, usize, f64)> {
    let list: Vec<String> = batches.iter().map(|b| b.to_string()).collect();
    let mut out = Vec::new();
    for fw in ["torch", "jax"] {
        let args = [
            "--framework",
            fw,
            "--batches",
            &list.join(","),
            "--repeats",
            &repeats.to_string(),
        ];
        for v in python_json_lines("train_step.py", &args, fw) {
            if let (Some(b), Some(s)) = (
                v.get("batch").and_then(|b| b.as_u64()),
                v.get("median_seconds").and_then(|s| s.as_f64()),
            ) {
                out.push((fw.to_string(), b as usize, s));
            }
        }
    }
    out
}

/// Runs `bench/baselines/<script>` with the baselines' venv (or `python3`) and returns its JSON
/// lines; a missing script, interpreter or package is reported on stderr (as `label`) and
/// gives no lines.
pub(crate) fn python_json_lines(
    script: &str,
    args: &[&str],
    label: &str,
) -> Vec<serde_json::Value> {
    let script = Path::new("bench/baselines").join(script);
    if !script.exists() {
        eprintln!(
            "{label} baseline skipped: {} not found (run from the repository root)",
            script.display()
        );
        return Vec::new();
    }
    let venv = Path::new("bench/baselines/.venv/bin/python");
    let python = if venv.exists() {
        venv.to_path_buf()
    } else {
        "python3".into()
    };
    let result = Command::new(&python)
        .arg(&script)
        .args(args)
        .output()
        .with_context(|| format!("cannot start {}", python.display()));
    let output = match result {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!(
                "{label} baseline failed: {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            return Vec::new();
        }
        Err(e) => {
            eprintln!("{label} baseline skipped: {e:#}");
            return Vec::new();
        }
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| match v.get("skipped").and_then(|s| s.as_str()) {
            Some(reason) => {
                eprintln!("{label} baseline skipped: {reason}");
                false
            }
            None => true,
        })
        .collect()
}
