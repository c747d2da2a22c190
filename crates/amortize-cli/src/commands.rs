//! The subcommands' work.

use std::path::{Path, PathBuf};
use std::time::Instant;

use amortize::eval::{
    amortization_gap, mean_gaps, nmse_db, relative_gaps, solver_iterates, speed_at_equal_quality,
    GapReport, SpeedReport,
};
use amortize::model::{Adjoint, FusedMlp, Model, ModelConfig, UnrolledConfig};
use amortize::problem::{Problem, ProblemConfig, Sinusoid, Sphere};
use amortize::solver::qp::{Admm, AdmmSettings, QpClass, QpData, QpProblem, RhoPolicy};
use amortize::solver::{
    iterates_in_domain, solve_named, ProximalGradient, Settings, SolverOptions, SOLVER_NAMES,
};
use amortize::train::{
    held_out_contexts, load_policy_with_schedule, write_atomic, Checkpoint, JsonlWriter, Loaded,
    Observer, Record, Trainer,
};
use amortize::{Error as LibError, Result as LibResult};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::experiment::{EvalConfig, Experiment, BUILTIN};
use crate::{plots, progress, report, Cli, Command};

/// Runs the parsed command line.
pub fn dispatch(cli: Cli) -> Result<()> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Run { experiment, steps } if crate::rlqp_run::is_rlqp(&experiment) => {
            let exp = crate::rlqp_run::load(&experiment, cli.seed, steps)?;
            let dir = crate::rlqp_run::run(&exp, &cli.out, quiet)?;
            println!("{}", dir.join("report.md").display());
        }
        Command::Run { experiment, steps } => {
            let exp = load_experiment(&experiment, cli.seed, steps)?;
            let dir = run_experiment(&exp, &cli.out, quiet, true)?;
            println!("{}", dir.join("report.md").display());
        }
        Command::Train { experiment, steps } => {
            let exp = load_experiment(&experiment, cli.seed, steps)?;
            let dir = run_experiment(&exp, &cli.out, quiet, false)?;
            println!("{}", dir.join("checkpoint").display());
        }
        Command::Eval {
            checkpoint,
            n,
            tolerance,
            experiment,
        } => {
            if n == 0 {
                bail!("--n must be at least 1");
            }
            let Loaded {
                meta,
                problem,
                model,
            } = match experiment {
                Some(spec) => {
                    let exp = Experiment::resolve(&spec)?;
                    Checkpoint::load_for(&checkpoint, &exp.problem, &Device::Cpu)?
                }
                None => Checkpoint::load(&checkpoint, &Device::Cpu)?,
            };
            let cfg = EvalConfig {
                size: n,
                tolerance,
                ..EvalConfig::default()
            };
            let outcome = evaluate(
                problem.as_ref(),
                model.as_ref(),
                &cfg,
                cli.seed.unwrap_or(meta.seed),
            )?;
            let summary = serde_json::json!({
                "checkpoint": checkpoint,
                "problem": meta.problem,
                "step": meta.step,
                "gap": outcome.gap,
                "speed": report::speed_summary(outcome.speed.as_ref()),
            });
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Command::Predict {
            checkpoint,
            contexts,
            output,
        } => predict(&checkpoint, &contexts, output.as_deref())?,
        Command::Solve {
            problem,
            solver,
            contexts,
            n,
            tol,
            max_iters,
            lr,
            l1,
            qp,
            qp_size,
            qp_class,
            rho_policy,
            sequence,
            warm_sequence,
            output,
        } => {
            let request = SolveRequest {
                problem,
                solver,
                contexts,
                n,
                settings: Settings {
                    tol,
                    max_iters,
                    max_time: None,
                },
                lr,
                l1,
                seed: cli.seed.unwrap_or(0),
            };
            let qp_only = [
                ("--qp", qp.is_some()),
                ("--qp-class", qp_class.is_some()),
                ("--rho-policy", rho_policy.is_some()),
                ("--sequence", sequence),
                ("--warm-sequence", warm_sequence),
            ];
            if let Some((flag, _)) = qp_only.iter().find(|(_, set)| *set) {
                if request.solver != "admm" {
                    bail!("{flag} is for --solver admm, not {}", request.solver);
                }
            }
            if warm_sequence && !sequence {
                bail!("--warm-sequence starts each QP of a --sequence from the previous one's solution; add --sequence");
            }
            let json = if request.solver == "admm" {
                let source = match (&qp, &qp_class) {
                    (Some(_), Some(_)) => {
                        bail!("--qp-class generates QPs; it cannot be used with --qp (a file)")
                    }
                    (Some(path), None) => QpSource::File(path),
                    (None, class) => QpSource::Generated {
                        class: class
                            .as_deref()
                            .map_or(Ok(QpClass::Random), parse_qp_class)?,
                        n: qp_size,
                    },
                };
                let mode = QpMode {
                    policy: rho_policy.as_deref(),
                    sequence,
                    warm_sequence,
                };
                solve_qps(source, mode, &request)?
            } else {
                solve_command(&request)?
            };
            let text = serde_json::to_string_pretty(&json)?;
            match output {
                Some(path) => write_atomic(&path, text.as_bytes())?,
                None => println!("{text}"),
            }
        }
        Command::List => list(),
        Command::Figure { which } => {
            for path in crate::tutorial_figures::write(which, &cli.out.join("figures"))? {
                println!("{}", path.display());
            }
        }
        Command::Bench {
            which,
            batches,
            repeats,
            rounds,
            no_baselines,
            qp_instances,
            part,
        } => crate::bench::run(
            which,
            &batches,
            repeats,
            rounds,
            qp_instances,
            part.as_deref(),
            !no_baselines,
            quiet,
        )?,
    }
    Ok(())
}

/// What `amortize solve` was asked.
struct SolveRequest {
    problem: String,
    solver: String,
    contexts: Option<PathBuf>,
    n: usize,
    settings: Settings,
    lr: f64,
    l1: f64,
    seed: u64,
}

/// Where `amortize solve --solver admm` gets its QPs.
enum QpSource<'a> {
    File(&'a Path),
    Generated { class: QpClass, n: usize },
}

/// How `amortize solve --solver admm` solves them: an optional learned ρ policy's folder,
/// whether in sequence (OSQP's update mode), and whether each QP of a sequence starts from
/// the previous one's solution.
struct QpMode<'a> {
    policy: Option<&'a Path>,
    sequence: bool,
    warm_sequence: bool,
}

/// A QP class by its name in configs, or an error listing the names.
fn parse_qp_class(name: &str) -> Result<QpClass> {
    QpClass::ALL
        .into_iter()
        .find(|c| c.name() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = QpClass::ALL.iter().map(|c| c.name()).collect();
            anyhow::anyhow!("unknown --qp-class '{name}' (known: {})", names.join(", "))
        })
}

/// Solves QPs with ADMM (eps_abs = eps_rel = --tol), with OSQP's ρ rule or a learned policy,
/// one by one or in sequence, and returns the JSON report per instance.
fn solve_qps(source: QpSource, mode: QpMode, req: &SolveRequest) -> Result<serde_json::Value> {
    let qps: Vec<QpProblem> = match source {
        QpSource::File(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading QP file {}", path.display()))?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON", path.display()))?;
            let items = match value {
                serde_json::Value::Array(items) => items,
                one => vec![one],
            };
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    let data: QpData = serde_json::from_value(v)
                        .with_context(|| format!("{}: QP {i}", path.display()))?;
                    data.to_problem()
                        .with_context(|| format!("{}: QP {i}", path.display()))
                })
                .collect::<Result<_>>()?
        }
        QpSource::Generated { class, n } => {
            if req.n == 0 || n < 2 {
                bail!("--n must be at least 1 and --qp-size at least 2");
            }
            let mut rng = StdRng::seed_from_u64(req.seed);
            if mode.sequence {
                let family = class.family(n, &mut rng)?;
                (0..req.n)
                    .map(|_| family.instance(&mut rng))
                    .collect::<LibResult<_>>()?
            } else {
                (0..req.n)
                    .map(|_| class.generate(n, &mut rng))
                    .collect::<LibResult<_>>()?
            }
        }
    };
    let mut settings = AdmmSettings {
        eps_abs: req.settings.tol,
        eps_rel: req.settings.tol,
        max_iters: req.settings.max_iters,
        warm_start_sequence: mode.warm_sequence,
        ..AdmmSettings::default()
    };
    let policy = match mode.policy {
        Some(dir) => {
            let (net, schedule) = load_policy_with_schedule(dir)
                .with_context(|| format!("--rho-policy {}", dir.display()))?;
            // Files from before the schedule was saved get the built-in `run rlqp`'s.
            let schedule = match schedule {
                Some(s) => s,
                None => crate::rlqp_run::load("rlqp", None, None)?.rlqp.schedule(),
            };
            settings = schedule.apply(settings);
            Some((net.frozen()?, schedule))
        }
        None => None,
    };
    let admm = Admm::new(settings)?;
    let rho_policy = policy.as_ref().map(|(p, _)| p as &dyn RhoPolicy);
    let solutions = if mode.sequence {
        admm.solve_sequence(&qps, rho_policy)?
    } else {
        qps.iter()
            .map(|qp| admm.solve_with_policy(qp, None, rho_policy))
            .collect::<LibResult<_>>()?
    };
    Ok(serde_json::json!({
        "problem": "qp",
        "solver": "admm",
        "rho": match (&policy, mode.policy) {
            (Some((_, schedule)), Some(dir)) => serde_json::json!({
                "policy": dir.display().to_string(),
                "schedule": schedule,
            }),
            _ => serde_json::json!("osqp"),
        },
        "sequence": mode.sequence,
        "settings": settings,
        "instances": solutions,
    }))
}

/// Solves the requested instances from scratch (random starts from the seed) and returns the
/// JSON report: status, iterations, seconds, and per instance y, value and residual.
fn solve_command(req: &SolveRequest) -> Result<serde_json::Value> {
    let config = ProblemConfig::default_for(&req.problem)?;
    let problem = config.build()?;
    let mut rng = StdRng::seed_from_u64(req.seed);
    let x = match &req.contexts {
        Some(path) => {
            let rows = crate::contexts::read_contexts(path, problem.context_dim())?;
            let n = rows.len();
            Tensor::from_vec(
                rows.into_iter().flatten().collect::<Vec<f64>>(),
                (n, problem.context_dim()),
                &Device::Cpu,
            )?
        }
        None => {
            if req.n == 0 {
                bail!("--n must be at least 1");
            }
            problem
                .sample_contexts(req.n, &mut rng, &Device::Cpu)?
                .to_dtype(DType::F64)?
        }
    };
    let n = x.dim(0)?;
    let d = problem.solution_dim();
    let y0: Vec<f64> = (0..n * d)
        .map(|_| rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng))
        .collect();
    let y0 = Tensor::from_vec(y0, (n, d), &Device::Cpu)?;
    let p = problem.as_ref();
    if iterates_in_domain(&req.solver) && matches!(config, ProblemConfig::Sphere(_)) {
        bail!(
            "{} solves f(y) + α‖y‖₁ over all of Rⁿ; the sphere's domain needs a solver over free y (gd, gd-armijo, adam, lbfgs, newton, cem, dcem)",
            req.solver
        );
    }
    let mut opts = SolverOptions {
        lr: req.lr,
        l1: req.l1,
        seed: req.seed,
        ..SolverOptions::default()
    };
    // Proximal methods on the lasso family: its smooth part, its α in the prox and step 1/L.
    let p = match p.as_lasso() {
        Some(lasso) if iterates_in_domain(&req.solver) => {
            opts.l1 = lasso.alpha();
            opts.lr = 1.0 / lasso.lipschitz();
            lasso.least_squares() as &dyn Problem
        }
        _ => p,
    };
    let solution = solve_named(&req.solver, p, &y0, &x, &req.settings, &opts)?;
    // Report points of the domain (most solvers iterate over free y).
    let y = if iterates_in_domain(&req.solver) {
        solution.y.clone()
    } else {
        p.to_domain(&solution.y)?
    };
    let values: Vec<f64> = solution.value.to_dtype(DType::F64)?.to_vec1()?;
    let residuals: Vec<f64> = solution.residual.to_dtype(DType::F64)?.to_vec1()?;
    let instances: Vec<serde_json::Value> = to_rows(&y)?
        .into_iter()
        .zip(values)
        .zip(residuals)
        .map(|((y, value), residual)| serde_json::json!({ "y": y, "value": value, "residual": residual }))
        .collect();
    Ok(serde_json::json!({
        "problem": problem.name(),
        "solver": req.solver,
        "status": solution.status,
        "iters": solution.iters,
        "elapsed": solution.elapsed,
        "instances": instances,
    }))
}

/// Trains the experiment `spec` that `exp` starts from (`init_from`), on `exp`'s seed, into
/// its own folder under `out`, and returns its trained model. The source must be on the same
/// problem and must not have an `init_from` of its own.
fn train_source(exp: &Experiment, spec: &str, out: &Path, quiet: bool) -> Result<Box<dyn Model>> {
    let mut source =
        Experiment::resolve(spec).with_context(|| format!("{}: init_from", exp.name))?;
    if source.name == exp.name {
        bail!(
            "{}: init_from '{spec}' names this experiment itself",
            exp.name
        );
    }
    if source.init_from.is_some() {
        bail!(
            "{}: init_from '{spec}' has an init_from of its own; chains are not supported",
            exp.name
        );
    }
    if source.problem != exp.problem {
        bail!(
            "{}: init_from '{spec}' is trained on another problem ({:?} there, {:?} here)",
            exp.name,
            source.problem,
            exp.problem
        );
    }
    source.seed = exp.seed;
    let dir = run_experiment(&source, out, quiet, false)?;
    let loaded = Checkpoint::load_for(&dir.join("checkpoint"), &exp.problem, &Device::Cpu)?;
    Ok(loaded.model)
}

fn load_experiment(spec: &str, seed: Option<u64>, steps: Option<usize>) -> Result<Experiment> {
    let mut exp = Experiment::resolve(spec)?;
    if let Some(s) = seed {
        exp.seed = s;
    }
    if let Some(s) = steps {
        exp.train.steps = s;
    }
    exp.validate()?;
    Ok(exp)
}

fn list() {
    println!("problems:    {}", ProblemConfig::NAMES.join(", "));
    println!(
        "models:      {}",
        amortize::model::ModelConfig::NAMES.join(", ")
    );
    println!("losses:      objective, log-objective, regression, mix, query, reptile (each summed over iterates with train.iterates; gradients by autodiff or es)");
    let projections: Vec<&str> = amortize::projection::projection_zoo()
        .iter()
        .map(|p| p.name())
        .collect();
    println!("projections: {}", projections.join(", "));
    let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
    println!("solvers:     {}, admm (QPs)", SOLVER_NAMES.join(", "));
    println!("experiments: {}, rlqp", names.join(", "));
    println!("benchmarks:  train-step, solvers, meta");
}

/// Collects records in memory (for the learning-curve figure).
#[derive(Default)]
struct Collect {
    train: Vec<(usize, f64)>,
    eval: Vec<(usize, f64)>,
}

impl Observer for &mut Collect {
    fn observe(&mut self, r: &Record) -> LibResult<()> {
        match r.phase {
            "train" => self.train.push((r.step, r.get("loss").unwrap_or(f64::NAN))),
            _ => self
                .eval
                .push((r.step, r.get("objective").unwrap_or(f64::NAN))),
        }
        Ok(())
    }
}

/// The outcome of evaluating a model on held-out contexts.
pub struct EvalOutcome {
    /// The amortization gap (needs y*).
    pub gap: Option<GapReport>,
    /// Speed at equal quality.
    pub speed: Option<SpeedReport>,
}

/// Gap and speed at equal quality on the `cfg.size` held-out contexts of seed `seed`
/// (the same set the trainer evaluates on when the sizes agree).
pub fn evaluate(
    problem: &dyn Problem,
    model: &dyn Model,
    cfg: &EvalConfig,
    seed: u64,
) -> Result<EvalOutcome> {
    let x = held_out_contexts(problem, cfg.size, seed, &Device::Cpu)?;
    let y_pred = model.forward(&x, problem)?.y;
    let y_star = problem.solve_exact(&x)?;
    let gap = match &y_star {
        Some(ys) => Some(amortization_gap(problem, &x, &y_pred, ys, cfg.tolerance)?),
        None => None,
    };
    // The fused forward where it applies (same numbers, no graph), else the model's forward.
    let fused = std::cell::RefCell::new(model.as_mlp().and_then(|m| FusedMlp::from_mlp(m).ok()));
    let predict = |x: &Tensor| -> LibResult<Tensor> {
        match fused.borrow_mut().as_mut() {
            Some(f) => f.predict(x, problem),
            None => Ok(model.forward(x, problem)?.y),
        }
    };
    let speed = if cfg.speed.baselines.is_empty() {
        None
    } else {
        Some(speed_at_equal_quality(problem, &x, &predict, &cfg.speed)?)
    };
    Ok(EvalOutcome { gap, speed })
}

/// Trains (and, with `evaluate_after`, evaluates and reports) one experiment into
/// `<out>/<name>/`; returns that folder.
pub fn run_experiment(
    exp: &Experiment,
    out: &Path,
    quiet: bool,
    evaluate_after: bool,
) -> Result<PathBuf> {
    let dir = out.join(&exp.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_atomic(&dir.join("config.toml"), exp.to_toml()?.as_bytes())?;
    let problem = exp.problem.build()?;
    let device = Device::Cpu;
    let model = exp.model.build(
        problem.as_ref(),
        &mut StdRng::seed_from_u64(exp.seed),
        &device,
    )?;
    if let Some(spec) = &exp.init_from {
        let source = train_source(exp, spec, out, quiet)?;
        model
            .init_from(source.as_ref())
            .with_context(|| format!("{}: init_from '{spec}'", exp.name))?;
    }

    // Contexts whose predictions are followed along training (the sphere figure).
    let track_x = problem.sample_contexts(
        exp.figures.track_contexts.max(1),
        &mut StdRng::seed_from_u64(exp.seed.wrapping_add(17)),
        &device,
    )?;
    let snap_every = (exp.train.steps / exp.figures.snapshots.max(1)).max(1);
    let mut snapshots: Vec<Vec<Vec<f64>>> =
        vec![to_rows(&model.forward(&track_x, problem.as_ref())?.y)?];

    let bar = progress::bar(exp.train.steps as u64, "train", quiet);
    let mut collect = Collect::default();
    let metrics = JsonlWriter::create(dir.join("metrics.jsonl"))?;
    let t0 = Instant::now();
    let result = {
        let snapshots = &mut snapshots;
        let problem_ref = problem.as_ref();
        let track = &track_x;
        let bar = &bar;
        Trainer::new(
            problem.as_ref(),
            exp.problem.clone(),
            model.as_ref(),
            exp.train.clone(),
            exp.seed,
        )?
        .observe(metrics)
        .observe(&mut collect)
        .checkpoint_to(dir.join("checkpoint"))
        .on_step(move |step, rec| {
            bar.inc(1);
            if step % 10 == 0 {
                bar.set_message(format!("loss {:.5}", rec.get("loss").unwrap_or(f64::NAN)));
            }
        })
        .snapshot_every(snap_every, move |_, model| {
            if let Ok(rows) = model
                .forward(track, problem_ref)
                .and_then(|p| to_rows(&p.y))
            {
                snapshots.push(rows);
            }
        })
        .run()
    };
    bar.finish_and_clear();
    let summary = match result {
        Ok(s) => s,
        Err(e @ LibError::NonFinite { .. }) => {
            return Err(anyhow::Error::new(e)).context(format!(
                "training of '{}' diverged; lower train.learning_rate or set train.clip_grad_norm",
                exp.name
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let train_seconds = t0.elapsed().as_secs_f64();
    if !evaluate_after {
        return Ok(dir);
    }

    let eval_bar = progress::bar(1, "eval", quiet);
    eval_bar.set_message("gap and speed at equal quality");
    let outcome = evaluate(problem.as_ref(), model.as_ref(), &exp.eval, exp.seed)?;
    eval_bar.finish_and_clear();

    let mut figures = Vec::new();
    if exp.figures.enabled {
        let fig_dir = dir.join("figures");
        std::fs::create_dir_all(&fig_dir)?;
        let optimum = outcome.gap.as_ref().map(|g| g.mean_optimum);
        figures.extend(plots::learning_curve(
            &fig_dir.join("learning-curve"),
            &collect.train,
            &collect.eval,
            optimum,
        )?);
        if let Some(speed) = &outcome.speed {
            figures.extend(plots::speed(&fig_dir.join("speed"), speed, optimum)?);
        }
        match &exp.problem {
            ProblemConfig::Sphere(c) => {
                let sphere = Sphere::new(c.clone())?;
                figures.extend(sphere_figure(
                    &fig_dir.join("sphere-predictions"),
                    &sphere,
                    &track_x,
                    &snapshots,
                )?);
            }
            ProblemConfig::Toy1d(_) => {
                figures.extend(toy1d_figure(
                    &fig_dir.join("landscape"),
                    problem.as_ref(),
                    model.as_ref(),
                )?);
            }
            ProblemConfig::Lasso(_) => {
                figures.extend(layers_figure(
                    &dir,
                    &fig_dir.join("layers"),
                    problem.as_ref(),
                    model.as_ref(),
                    &exp.eval,
                    exp.seed,
                )?);
            }
            ProblemConfig::Sinusoid(c) => {
                figures.extend(meta_learning_figures(
                    &dir,
                    &fig_dir,
                    &Sinusoid::new(c.clone())?,
                    model.as_ref(),
                    exp.eval.size,
                    exp.seed,
                )?);
            }
            ProblemConfig::ElasticNetIsta(_)
            | ProblemConfig::FixedPointToy(_)
            | ProblemConfig::QpAdmm(_) => {
                figures.extend(crate::fixed_point_report::fixed_point_figures(
                    &dir,
                    &fig_dir,
                    problem.as_ref(),
                    model.as_ref(),
                    &exp.eval,
                    exp.seed,
                )?);
            }
            ProblemConfig::Quadratic(_) => {}
        }
        if exp.eval.compare_warm_start {
            figures.extend(semi_vs_warm(
                &dir,
                &fig_dir.join("semi-vs-warm"),
                exp,
                problem.as_ref(),
                model.as_ref(),
                quiet,
            )?);
        }
    }
    report::write(&dir, exp, &summary, train_seconds, &outcome, &figures)?;
    Ok(dir)
}

/// Meta-learning (§6.3): the mean query and support MSE on `size` held-out tasks after
/// k = 0…10 adaptation steps (`meta.csv`, the curve as a figure), and the adapted fits after 1
/// and 10 steps on 4 tasks (`figures/fits-task{i}`).
fn meta_learning_figures(
    dir: &Path,
    fig_dir: &Path,
    sinusoid: &Sinusoid,
    model: &dyn Model,
    size: usize,
    seed: u64,
) -> Result<Vec<PathBuf>> {
    let problem: &dyn Problem = sinusoid;
    let x = held_out_contexts(problem, size, seed, &Device::Cpu)?;
    let mut csv = String::from("steps,query_mse,support_mse\n");
    let mut query = Vec::new();
    for k in 0..=10 {
        let Some(pred) = model.forward_with_steps(&x, problem, k) else {
            anyhow::bail!(
                "the meta-learning report needs a model with adaptation steps (unrolled)"
            );
        };
        let phi = pred?.y;
        let mean = |t: Tensor| -> Result<f64> {
            Ok(t.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
        };
        let q = mean(
            problem
                .query_objective(&phi, &x)?
                .context("sinusoid tasks have a query set")?,
        )?;
        let s = mean(problem.objective(&phi, &x)?)?;
        csv.push_str(&format!("{k},{q},{s}\n"));
        query.push((k as f64, q));
    }
    write_atomic(&dir.join("meta.csv"), csv.as_bytes())?;
    let mut out = plots::curves(
        &fig_dir.join("meta-adaptation"),
        "Held-out tasks: query MSE after k adaptation steps",
        ("adaptation steps k", "query MSE"),
        &[("query MSE".to_string(), query)],
        true,
    )?;
    let (tasks, grid, truth) = sinusoid.sample_tasks_with_curves(
        4,
        200,
        &mut StdRng::seed_from_u64(seed ^ 0xF175),
        &Device::Cpu,
    )?;
    let shots = sinusoid.config().shots;
    let fitted: Vec<Tensor> = [1usize, 10]
        .iter()
        .map(|&k| -> Result<Tensor> {
            let phi = model
                .forward_with_steps(&tasks, problem, k)
                .context("adaptation steps")??
                .y;
            Ok(sinusoid.learner(&phi, &grid.to_dtype(phi.dtype())?)?)
        })
        .collect::<Result<_>>()?;
    let rows = |t: &Tensor| -> Result<Vec<Vec<f64>>> { Ok(t.to_dtype(DType::F64)?.to_vec2()?) };
    let (g, tr) = (rows(&grid)?, rows(&truth)?);
    let (f1, f10) = (rows(&fitted[0])?, rows(&fitted[1])?);
    let support = rows(&tasks.narrow(1, 0, 2 * shots)?)?;
    for i in 0..4 {
        let curve = |v: &[f64]| -> Vec<(f64, f64)> {
            g[i].iter().copied().zip(v.iter().copied()).collect()
        };
        let mut pts: Vec<(f64, f64)> = (0..shots)
            .map(|j| (support[i][j], support[i][shots + j]))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        out.extend(plots::curves(
            &fig_dir.join(format!("fits-task{i}")),
            &format!("Task {i}: {shots} shots, adapted learner"),
            ("t", "y"),
            &[
                ("true function".to_string(), curve(&tr[i])),
                ("after 1 step".to_string(), curve(&f1[i])),
                ("after 10 steps".to_string(), curve(&f10[i])),
                ("support points (joined)".to_string(), pts),
            ],
            false,
        )?);
    }
    Ok(out)
}

/// Semi-amortized against warm-started (§3.2.3): trains the experiment's `unrolled` model again
/// with the warm-start adjoint (its init alone; the steps refine only at prediction time) and
/// the same budget, then writes the mean gap per iterate k = 0…K of both to
/// `semi-vs-warm.csv` and a figure. The warm-start model's ŷ⁰ is a fully-amortized model, so
/// row 0 of its column is the fully-amortized gap.
fn semi_vs_warm(
    dir: &Path,
    stem: &Path,
    exp: &Experiment,
    problem: &dyn Problem,
    model: &dyn Model,
    quiet: bool,
) -> Result<Vec<PathBuf>> {
    let ModelConfig::Unrolled(c) = &exp.model else {
        anyhow::bail!("eval.compare_warm_start needs an unrolled model");
    };
    let warm_config = ModelConfig::Unrolled(UnrolledConfig {
        adjoint: Adjoint::WarmStart,
        ..c.clone()
    });
    let warm = warm_config.build(problem, &mut StdRng::seed_from_u64(exp.seed), &Device::Cpu)?;
    let bar = progress::bar(exp.train.steps as u64, "warm-start twin", quiet);
    Trainer::new(
        problem,
        exp.problem.clone(),
        warm.as_ref(),
        exp.train.clone(),
        exp.seed,
    )?
    .on_step(|_, _| bar.inc(1))
    .run()?;
    bar.finish_and_clear();
    let x = held_out_contexts(problem, exp.eval.size, exp.seed, &Device::Cpu)?;
    let y_star = problem
        .solve_exact(&x)?
        .context("eval.compare_warm_start needs a family with an exact solver")?;
    let f_star = problem.objective(&y_star, &x)?;
    let gaps = |m: &dyn Model| -> Result<Vec<f64>> {
        Ok(mean_gaps(
            problem,
            &m.forward(&x, problem)?.iterates,
            &x,
            &f_star,
        )?)
    };
    let (warm_gaps, semi_gaps) = (gaps(warm.as_ref())?, gaps(model)?);
    let mut csv = String::from("k,warm_start_gap,semi_amortized_gap\n");
    for (k, (w, s)) in warm_gaps.iter().zip(&semi_gaps).enumerate() {
        csv.push_str(&format!("{k},{w},{s}\n"));
    }
    write_atomic(&dir.join("semi-vs-warm.csv"), csv.as_bytes())?;
    let series = |name: &str, v: &[f64]| {
        (
            name.to_string(),
            v.iter().enumerate().map(|(k, g)| (k as f64, *g)).collect(),
        )
    };
    plots::curves(
        stem,
        "Mean amortization gap per unrolled step",
        ("step k (k = 0: the init)", "mean f(y_k) - f(y*)"),
        &[
            series("warm start (init trained alone)", &warm_gaps),
            series("semi-amortized (end to end)", &semi_gaps),
        ],
        true,
    )
}

/// The sparse-coding view (tutorial §6.2): per iteration/layer k, the mean relative gap and the
/// NMSE to the planted codes (dB) of ISTA and FISTA from 0, the model's layers, and FISTA
/// warm-started from the model's answer; written to `layers.csv` and plotted.
fn layers_figure(
    dir: &Path,
    stem: &Path,
    problem: &dyn Problem,
    model: &dyn Model,
    cfg: &EvalConfig,
    seed: u64,
) -> Result<Vec<PathBuf>> {
    let lasso = problem
        .as_lasso()
        .context("the per-layer figure needs the lasso family")?;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED_1A7E_u64);
    let (x, codes) = match problem.sample_with_solutions(cfg.size, &mut rng, &Device::Cpu)? {
        Some((x, codes)) => (x, Some(codes)),
        None => (
            held_out_contexts(problem, cfg.size, seed, &Device::Cpu)?,
            None,
        ),
    };
    let x = x.to_dtype(DType::F64)?;
    let y_star = problem
        .solve_exact(&x)?
        .context("the lasso family has an exact solver")?;
    let f_star = problem.objective(&y_star, &x)?;
    let pred = model.forward(&x, problem)?;
    let layers = pred.iterates.len().saturating_sub(1).max(16);
    let (smooth, prox, step) = (lasso.least_squares(), lasso.prox(), 1.0 / lasso.lipschitz());
    let zero = y_star.zeros_like()?;
    let ista = solver_iterates(
        &ProximalGradient::ista(smooth, prox, step)?,
        &zero,
        &x,
        2 * layers,
    )?;
    let fista_solver = ProximalGradient::fista(smooth, prox, step)?.with_restart(false);
    let fista = solver_iterates(&fista_solver, &zero, &x, 2 * layers)?;
    let warm = solver_iterates(&fista_solver, &pred.y.to_dtype(DType::F64)?, &x, layers)?;
    let model_iterates = if pred.iterates.is_empty() {
        vec![pred.y.clone()]
    } else {
        pred.iterates.clone()
    };
    let k_model = model_iterates.len() - 1;
    let runs = [
        (&ista, 0),
        (&fista, 0),
        (&model_iterates, 0),
        (&warm, k_model),
    ];
    let mut gaps = Vec::new();
    let mut nmse = Vec::new();
    for (its, _) in &runs {
        gaps.push(relative_gaps(problem, its, &x, &f_star)?);
        nmse.push(match &codes {
            Some(c) => its
                .iter()
                .map(|y| nmse_db(y, c))
                .collect::<LibResult<Vec<f64>>>()?,
            None => Vec::new(),
        });
    }
    let at = |v: &[f64], offset: usize, k: usize| {
        k.checked_sub(offset)
            .and_then(|j| v.get(j))
            .map_or(String::new(), |v| v.to_string())
    };
    let mut csv = String::from(
        "k,ista_gap,fista_gap,model_gap,model_then_fista_gap,ista_nmse_db,fista_nmse_db,model_nmse_db,model_then_fista_nmse_db\n",
    );
    for k in 0..=2 * layers {
        let cells: Vec<String> = gaps
            .iter()
            .chain(&nmse)
            .zip(runs.iter().chain(&runs))
            .map(|(v, (_, offset))| at(v, *offset, k))
            .collect();
        csv.push_str(&format!("{k},{}\n", cells.join(",")));
    }
    write_atomic(&dir.join("layers.csv"), csv.as_bytes())?;
    let names = [
        "ISTA".to_string(),
        "FISTA".to_string(),
        format!("model ({k_model} layers)"),
        "FISTA warm-started from the model".to_string(),
    ];
    let series = |values: &[Vec<f64>]| -> Vec<(String, Vec<(f64, f64)>)> {
        names
            .iter()
            .zip(values)
            .zip(&runs)
            .map(|((name, v), (_, offset))| {
                let pts = v
                    .iter()
                    .enumerate()
                    .map(|(k, y)| ((k + offset) as f64, *y))
                    .collect();
                (name.clone(), pts)
            })
            .collect()
    };
    let mut out = plots::curves(
        stem,
        "Mean relative objective gap per iteration / layer",
        ("iteration / layer k", "(E(y_k) - E*) / E*"),
        &series(&gaps),
        true,
    )?;
    if codes.is_none() {
        return Ok(out);
    }
    out.extend(plots::curves(
        &stem.with_file_name("layers-nmse"),
        "NMSE to the planted codes per iteration / layer",
        ("iteration / layer k", "NMSE (dB)"),
        &series(&nmse),
        false,
    )?);
    Ok(out)
}

fn to_rows(t: &Tensor) -> LibResult<Vec<Vec<f64>>> {
    Ok(t.to_dtype(DType::F64)?.to_vec2()?)
}

fn sphere_figure(
    stem: &Path,
    sphere: &Sphere,
    x: &Tensor,
    snapshots: &[Vec<Vec<f64>>],
) -> Result<Vec<PathBuf>> {
    let rows = to_rows(x)?;
    let y_star = to_rows(
        &sphere
            .solve_exact(x)?
            .expect("the sphere has an exact solver"),
    )?;
    let panels: Vec<plots::SpherePanel> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let s = sphere.clone();
            let ctx = row.clone();
            plots::SpherePanel {
                value: Box::new(move |p| s.point_value_and_grad(p, &ctx).0),
                optimum: [y_star[i][0], y_star[i][1], y_star[i][2]],
                trajectory: snapshots
                    .iter()
                    .map(|snap| [snap[i][0], snap[i][1], snap[i][2]])
                    .collect(),
            }
        })
        .collect();
    plots::sphere_map(stem, &panels)
}

fn toy1d_figure(stem: &Path, problem: &dyn Problem, model: &dyn Model) -> Result<Vec<PathBuf>> {
    let xs: Vec<f64> = (0..=200).map(|i| -5.0 + 10.0 * i as f64 / 200.0).collect();
    let x = Tensor::from_vec(xs.clone(), (xs.len(), 1), &Device::Cpu)?;
    let y_star: Vec<f64> = to_rows(
        &problem
            .solve_exact(&x)?
            .context("toy1d has an exact solver")?,
    )?
    .into_iter()
    .map(|r| r[0])
    .collect();
    let y_hat: Vec<f64> = to_rows(&model.forward(&x.to_dtype(DType::F32)?, problem)?.y)?
        .into_iter()
        .map(|r| r[0])
        .collect();
    let value = |x: f64, y: f64| -> f64 {
        let s = x.sin() + x * (1.0 + 0.1 * x.cos());
        1.0 / (1.0 + (-(y - s).powi(2) / 80.0).exp())
    };
    let opt: Vec<(f64, f64)> = xs.iter().copied().zip(y_star).collect();
    let pred: Vec<(f64, f64)> = xs.iter().copied().zip(y_hat).collect();
    plots::landscape_1d(stem, (-5.0, 5.0), (-7.0, 7.0), &value, &opt, &pred)
}

fn predict(checkpoint: &Path, contexts: &Path, output: Option<&Path>) -> Result<()> {
    let Loaded { problem, model, .. } = Checkpoint::load(checkpoint, &Device::Cpu)?;
    let rows = crate::contexts::read_contexts(contexts, problem.context_dim())?;
    let n = rows.len();
    let flat: Vec<f64> = rows.into_iter().flatten().collect();
    let x =
        Tensor::from_vec(flat, (n, problem.context_dim()), &Device::Cpu)?.to_dtype(DType::F32)?;
    let y = model.forward(&x, problem.as_ref())?.y;
    let f: Vec<f64> = problem.objective(&y, &x)?.to_dtype(DType::F64)?.to_vec1()?;
    let r: Vec<f64> = problem.residual(&y, &x)?.to_dtype(DType::F64)?.to_vec1()?;
    let json = serde_json::json!({
        "problem": problem.name(),
        "predictions": to_rows(&y)?,
        "objective": f,
        "residual": r,
    });
    let text = serde_json::to_string_pretty(&json)?;
    match output {
        Some(path) => write_atomic(path, text.as_bytes())?,
        None => println!("{text}"),
    }
    Ok(())
}
