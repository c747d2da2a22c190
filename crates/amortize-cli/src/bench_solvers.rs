//! `amortize bench solvers`: the classical solvers side by side.
//!
//! 1. Per solver, on a batch of 1,024 instances: iterations to tolerance and time per iteration
//!    (the driver's residual check included).
//! 2. Lasso (W 64×256 with unit-norm columns, α = 0.1, 10%-sparse codes, noise 0.01, batch
//!    1,024, f32): iterations of ISTA and FISTA to a mean relative objective gap of 1e-3 and
//!    1e-4 (E* from restarted FISTA in f64 to a gradient-mapping norm of 1e-10) and the time of
//!    that many iterations, against `bench/baselines/lasso.py` (JAX, jit).
//! 3. OSQP's random QPs (P = MMᵀ + 10⁻²I, m = 10n, density 0.15): ADMM's iterations, total
//!    wall-clock of the sequential batch (set-up included) and accuracy, against
//!    `bench/baselines/osqp_qp.py` (the OSQP C solver, 1,000 sequential solves).
//! 4. `qp-costs` (only with `--part qp-costs`): what one ADMM solve spends, per QP class and
//!    size: the set-up (scaling, ordering, symbolic analysis), one numeric KKT factorisation and
//!    one iteration with its termination check, and from them the ceiling on the wall-clock
//!    speed-up of any ρ policy that saves iterations (RLQP, tutorial §6.4.5).
//! 5. `kkt` (only with `--part kkt`): the sparse KKT factor's two layouts, simplicial (OSQP's
//!    QDLDL layout) and supernodal, side by side on the classes solved in sparse form, and the
//!    layout `auto` picks.
//! 6. `rho-floor` (only with `--part rho-floor`): per QP class and size, the fewest iterations
//!    any constant ρ per kind of row (one for equalities, one for inequalities) reaches, found
//!    by a grid, against OSQP's adaptive rule: what a ρ chosen once, at the start, can save.
//! 7. `ordering` (only with `--part ordering`): the sparse KKT factor under AMD's ordering and
//!    under `auto` (a degree ordering certified within 20% of the fewest entries, else AMD)
//!    side by side: set-up and whole-solve time as ratios, factor sizes, how often AMD was
//!    skipped.

use std::collections::BTreeMap;
use std::time::Instant;

use amortize::eval::relative_gaps;
use amortize::eval::time_median;
use amortize::problem::{Lasso, LassoConfig, Problem, ProblemConfig};
use amortize::solver::qp::{
    Admm, AdmmSettings, AdmmWorkspace, KktForm, KktOrdering, QpClass, QpProblem, QpStatus, RowKind,
};
use amortize::solver::{
    solve_named, FusedLasso, ProximalGradient, Settings, Solver, SolverOptions,
};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::bench::{fmt_time, median, python_json_lines, ratio};

const BATCH: usize = 1024;
const QP_SIZES: [usize; 3] = [10, 50, 100];

/// Runs the three parts and prints their tables.
pub fn run(
    repeats: usize,
    rounds: usize,
    qp_instances: usize,
    part: Option<&str>,
    baselines: bool,
    quiet: bool,
) -> Result<()> {
    if let Some(p) = part {
        if ![
            "table",
            "lasso",
            "qp",
            "qp-costs",
            "kkt",
            "ordering",
            "rho-floor",
        ]
        .contains(&p)
        {
            bail!(
                "unknown --part '{p}' (known: table, lasso, qp, qp-costs, kkt, ordering, rho-floor)"
            );
        }
    }
    if part == Some("rho-floor") {
        return rho_floor(quiet);
    }
    if part == Some("qp-costs") {
        return qp_costs(repeats, quiet);
    }
    if part == Some("kkt") {
        return kkt_layouts(repeats, quiet);
    }
    if part == Some("ordering") {
        return kkt_orderings(repeats, quiet);
    }
    let wanted = |name: &str| part.is_none_or(|p| p == name);
    if wanted("table") {
        per_solver_table(quiet)?;
    }
    if wanted("lasso") {
        lasso_table(repeats, rounds, baselines, quiet)?;
    }
    if wanted("qp") {
        qp_table(qp_instances, baselines, quiet)?;
    }
    Ok(())
}

fn per_solver_table(quiet: bool) -> Result<()> {
    // (solver, problem, lr, tol, max_iters)
    let cases: [(&str, &str, f64, f64, usize); 10] = [
        ("gd", "sphere", 0.1, 1e-5, 5000),
        ("gd-armijo", "sphere", 1.0, 1e-5, 5000),
        ("adam", "sphere", 0.01, 1e-3, 5000),
        ("lbfgs", "sphere", 1.0, 1e-5, 5000),
        ("cem", "sphere", 0.1, 1e-2, 50),
        ("dcem", "sphere", 0.1, 1e-2, 50),
        ("gd", "quadratic", 0.2, 1e-8, 5000),
        ("lbfgs", "quadratic", 1.0, 1e-6, 5000),
        ("newton", "quadratic", 0.1, 1e-8, 100),
        ("fista", "quadratic", 0.2, 1e-8, 5000),
    ];
    let bar = crate::progress::bar(cases.len() as u64, "solvers", quiet);
    println!("solvers: batch of {BATCH} instances, f64, random starts (seed 0); time per iteration includes the residual check");
    println!("| solver | problem | tolerance | status | iterations | time / iteration | total |");
    println!("|---|---|---|---|---|---|---|");
    for (name, problem, lr, tol, max_iters) in cases {
        let p = ProblemConfig::default_for(problem)?.build()?;
        let mut rng = StdRng::seed_from_u64(0);
        let x = p
            .sample_contexts(BATCH, &mut rng, &Device::Cpu)?
            .to_dtype(DType::F64)?;
        let y0: Vec<f64> = (0..BATCH * p.solution_dim())
            .map(|_| rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng))
            .collect();
        let y0 = Tensor::from_vec(y0, (BATCH, p.solution_dim()), &Device::Cpu)?;
        let settings = Settings {
            tol,
            max_iters,
            max_time: None,
        };
        let opts = SolverOptions {
            lr,
            l1: 0.0,
            ..SolverOptions::default()
        };
        let s = solve_named(name, p.as_ref(), &y0, &x, &settings, &opts)?;
        bar.inc(1);
        println!(
            "| {name} | {problem} | {tol:e} | {:?} | {} | {} | {} |",
            s.status,
            s.iters,
            fmt_time(Some(s.elapsed / s.iters.max(1) as f64)),
            fmt_time(Some(s.elapsed)),
        );
    }
    bar.finish_and_clear();
    println!();
    Ok(())
}

/// Iterations to reach mean relative gaps 1e-3 and 1e-4, the gap at 16 iterations.
struct GapCurve {
    to_1e3: Option<usize>,
    to_1e4: Option<usize>,
    at_16: f64,
}

fn gap_curve<S: Solver>(
    solver: &S,
    x32: &Tensor,
    x64: &Tensor,
    f_star: &Tensor,
    lasso: &Lasso,
    max_iters: usize,
) -> Result<GapCurve> {
    let y0 = Tensor::zeros(
        (x32.dim(0)?, lasso.solution_dim()),
        DType::F32,
        x32.device(),
    )?;
    let mut state = solver.init(&y0, x32)?;
    let mut curve = GapCurve {
        to_1e3: None,
        to_1e4: None,
        at_16: f64::NAN,
    };
    for k in 1..=max_iters {
        state = solver.detach(solver.step(state, x32)?);
        let gap = relative_gaps(
            lasso,
            std::slice::from_ref(solver.iterate(&state)),
            x64,
            f_star,
        )?[0];
        if k == 16 {
            curve.at_16 = gap;
        }
        if gap <= 1e-3 && curve.to_1e3.is_none() {
            curve.to_1e3 = Some(k);
        }
        if gap <= 1e-4 {
            curve.to_1e4 = Some(k);
            break;
        }
    }
    Ok(curve)
}

fn lasso_table(repeats: usize, rounds: usize, baselines: bool, quiet: bool) -> Result<()> {
    // The lasso family's defaults are this benchmark: W 64×256, α = 0.1, noise 0.01.
    let lasso = Lasso::new(LassoConfig::default())?;
    let x32 = lasso.sample_contexts(BATCH, &mut StdRng::seed_from_u64(1), &Device::Cpu)?;
    let x64 = x32.to_dtype(DType::F64)?;
    let (smooth, prox, step) = (lasso.least_squares(), lasso.prox(), 1.0 / lasso.lipschitz());
    let y_star = lasso
        .solve_exact(&x64)?
        .ok_or_else(|| anyhow::anyhow!("the lasso family has an exact solver"))?;
    let f_star = lasso.objective(&y_star, &x64)?;
    let methods: [(&str, ProximalGradient, bool, bool); 3] = [
        (
            "fista",
            ProximalGradient::fista(smooth, prox, step)?.with_restart(false),
            true,
            false,
        ),
        (
            "fista+restart",
            ProximalGradient::fista(smooth, prox, step)?,
            true,
            true,
        ),
        (
            "ista",
            ProximalGradient::ista(smooth, prox, step)?,
            false,
            false,
        ),
    ];
    let zeros32 = Tensor::zeros((BATCH, 256), DType::F32, &Device::Cpu)?;
    let xs: Vec<f32> = x32.flatten_all()?.to_vec1()?;
    let bar = crate::progress::bar((rounds.max(1) * methods.len()) as u64, "lasso", quiet);
    let mut curves = Vec::new();
    let mut fused = Vec::new();
    for (_, solver, accelerated, restart) in &methods {
        curves.push(gap_curve(solver, &x32, &x64, &f_star, &lasso, 5000)?);
        fused.push(FusedLasso::new(
            smooth,
            lasso.alpha(),
            step,
            *accelerated,
            *restart,
        )?);
    }
    // Rounds alternate between JAX and ours; each time is the median over rounds. JAX runs
    // pinned to one core and with its defaults (it spreads work over both cores here).
    let mut candle_times: Vec<Vec<f64>> = vec![Vec::new(); methods.len()];
    let mut fused_times: Vec<Vec<f64>> = vec![Vec::new(); methods.len()];
    let mut fused2_times: Vec<Vec<f64>> = vec![Vec::new(); methods.len()];
    let mut jax: BTreeMap<(String, String), (Vec<f64>, serde_json::Value)> = BTreeMap::new();
    for _ in 0..rounds.max(1) {
        if baselines {
            for threads in ["1", "all"] {
                let args = ["--repeats", &repeats.to_string(), "--threads", threads];
                for v in python_json_lines("lasso.py", &args, "jax lasso") {
                    let (Some(m), Some(s)) = (
                        v.get("method").and_then(|m| m.as_str()).map(str::to_string),
                        v.get("seconds").and_then(|s| s.as_f64()),
                    ) else {
                        continue;
                    };
                    let key = (m, threads.to_string());
                    jax.entry(key)
                        .or_insert_with(|| (Vec::new(), v.clone()))
                        .0
                        .push(s);
                }
            }
        }
        for (i, (_, solver, _, _)) in methods.iter().enumerate() {
            let iters = curves[i].to_1e4.unwrap_or(5000);
            candle_times[i].push(time_median(repeats, || {
                let mut s = solver.init(&zeros32, &x32)?;
                for _ in 0..iters {
                    s = solver.detach(solver.step(s, &x32)?);
                }
                Ok(())
            })?);
            let mut ys = vec![0.0f32; BATCH * 256];
            for (threads, times) in [(1, &mut fused_times[i]), (2, &mut fused2_times[i])] {
                times.push(time_median(repeats, || {
                    ys.fill(0.0);
                    fused[i].run(&xs, &mut ys, iters, 0.0, threads).map(|_| ())
                })?);
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    println!("lasso: W 64×256 (unit-norm columns), α = {}, batch {BATCH}, f32 iterations from 0, mean relative gap (E − E*)/E*; time of the iterations to 1e-4 (median of {repeats}, then over {} rounds)", lasso.alpha(), rounds.max(1));
    println!("| method | gap at 16 | iters to 1e-3 | iters to 1e-4 | JAX iters to 1e-3 / 1e-4 | candle ops, 1 thread | fused, 1 thread | JAX jit, 1 core | fused / JAX (1 core) | fused, 2 threads | JAX jit, default | fused / JAX (2 cores) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let opt = |v: Option<usize>| v.map_or("—".into(), |k| k.to_string());
    for (i, (name, _, _, _)) in methods.iter().enumerate() {
        let c = &curves[i];
        let iters = c.to_1e4.unwrap_or(5000);
        // The fused path's own answer after the same number of iterations.
        let (y, _) = fused[i].solve(&x32, &zeros32, iters, 0.0)?;
        let fused_gap = relative_gaps(&lasso, &[y], &x64, &f_star)?[0];
        if fused_gap > 1.5e-4 {
            eprintln!("warning: {name} fused path reached a gap of {fused_gap:.2e} only");
        }
        let t_candle = median(candle_times[i].clone());
        let t_fused = median(fused_times[i].clone());
        let t_fused2 = median(fused2_times[i].clone());
        let jax_for = |threads: &str| {
            jax.get(&(
                name.trim_end_matches("+restart").to_string(),
                threads.to_string(),
            ))
        };
        let jax_t = |threads: &str| jax_for(threads).map(|(ts, _)| median(ts.clone()));
        let field = |k: &str| {
            jax_for("1")
                .and_then(|(_, v)| v.get(k).and_then(|x| x.as_u64()))
                .map(|x| x as usize)
        };
        println!(
            "| {name} | {:.4} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} |",
            c.at_16,
            opt(c.to_1e3),
            opt(c.to_1e4),
            opt(field("iters_to_1e-3")),
            opt(field("iters")),
            fmt_time(Some(t_candle)),
            fmt_time(Some(t_fused)),
            fmt_time(jax_t("1")),
            ratio(t_fused, jax_t("1")),
            fmt_time(Some(t_fused2)),
            fmt_time(jax_t("all")),
            ratio(t_fused2, jax_t("all")),
        );
    }
    println!("(JAX runs plain FISTA; fista+restart is compared with it too. \"fused\" is solver::FusedLasso, \"candle ops\" the ProximalGradient tensor solver; ratios below 1 mean ours is faster)");
    println!();
    Ok(())
}

fn qp_table(instances: usize, baselines: bool, quiet: bool) -> Result<()> {
    let osqp: Vec<serde_json::Value> = if baselines {
        let sizes: Vec<String> = QP_SIZES.iter().map(|n| n.to_string()).collect();
        let args = [
            "--sizes",
            &sizes.join(","),
            "--instances",
            &instances.to_string(),
        ];
        python_json_lines("osqp_qp.py", &args, "osqp")
    } else {
        Vec::new()
    };
    let admm = Admm::default();
    let reference = Admm::new(AdmmSettings::accurate(1e-8))?;
    println!("random QPs (OSQP's class, m = 10n, density 0.15), {instances} instances per size, eps_abs = eps_rel = 1e-3, one thread, solved one after another");
    println!("| n | solver | solved | iters mean | median | max | total time (set-up + solve) | mean rel. objective error | ours / OSQP time | ours / OSQP iters |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let bar = crate::progress::bar(QP_SIZES.len() as u64, "qp", quiet);
    for n in QP_SIZES {
        let mut rng = StdRng::seed_from_u64(n as u64);
        let qps: Vec<QpProblem> = (0..instances)
            .map(|_| QpProblem::random(n, 10 * n, 0.15, &mut rng))
            .collect::<amortize::Result<_>>()?;
        let start = Instant::now();
        let sols = admm.solve_batch(&qps, 1)?;
        let total = start.elapsed().as_secs_f64();
        let mut errors = Vec::with_capacity(qps.len());
        for (qp, s) in qps.iter().zip(&sols) {
            let r = reference.solve(qp, Some((&s.y, &s.lambda)))?;
            if r.status == QpStatus::Solved {
                errors.push((s.objective - r.objective).abs() / r.objective.abs().max(1.0));
            }
        }
        bar.inc(1);
        let mut iters: Vec<f64> = sols.iter().map(|s| s.iters as f64).collect();
        let mean = iters.iter().sum::<f64>() / iters.len().max(1) as f64;
        iters.sort_by(|a, b| a.total_cmp(b));
        let solved = sols.iter().filter(|s| s.status == QpStatus::Solved).count();
        let err = errors.iter().sum::<f64>() / errors.len().max(1) as f64;
        let theirs = osqp
            .iter()
            .find(|v| v.get("n").and_then(|x| x.as_u64()) == Some(n as u64));
        let o = |k: &str| theirs.and_then(|v| v.get(k)).and_then(|x| x.as_f64());
        println!(
            "| {n} | admm (ours) | {solved}/{} | {mean:.1} | {} | {} | {} | {err:.1e} | {} | {} |",
            sols.len(),
            iters.get(iters.len() / 2).copied().unwrap_or(0.0),
            iters.last().copied().unwrap_or(0.0),
            fmt_time(Some(total)),
            ratio(total, o("setup_solve_seconds_total")),
            ratio(mean, o("iters_mean")),
        );
        if let Some(v) = theirs {
            let solved = v
                .get("status_counts")
                .and_then(|c| c.get("solved"))
                .and_then(|x| x.as_u64())
                .unwrap_or(0);
            println!(
                "| {n} | OSQP {} | {solved}/{} | {:.1} | {} | {} | {} | {:.1e} | | |",
                v.get("version").and_then(|x| x.as_str()).unwrap_or("?"),
                instances,
                o("iters_mean").unwrap_or(f64::NAN),
                o("iters_median").unwrap_or(f64::NAN),
                o("iters_max").unwrap_or(f64::NAN),
                fmt_time(o("setup_solve_seconds_total")),
                o("rel_obj_err_mean").unwrap_or(f64::NAN),
            );
        }
    }
    bar.finish_and_clear();
    println!("(both check termination every 25 iterations; objective errors are against each solver's own run at eps 1e-8 (ours, warm-started) or 1e-9 (OSQP, polished))");
    Ok(())
}

/// The parts of one ADMM solve, in seconds, for one QP.
struct SolveCosts {
    /// Scaling, KKT assembly, ordering and symbolic analysis (the set-up minus its factorisation).
    setup: f64,
    /// One numeric factorisation of the KKT matrix.
    factor: f64,
    /// One iteration with its termination check (every iteration; `run rlqp` counts
    /// iterations that way and times each method at its fastest check interval, so this
    /// cost is an upper bound there).
    iteration: f64,
    /// OSQP's rule, checked every iteration: iterations, factorisations, measured seconds.
    osqp: (f64, f64, f64),
}

/// Times the parts of a solve of `qp` (medians of `repeats`) with the KKT form `kkt`.
fn solve_costs(qp: &QpProblem, repeats: usize, kkt: KktForm) -> Result<SolveCosts> {
    let timing = AdmmSettings {
        adaptive_rho: false,
        check_every: 1,
        kkt,
        ..AdmmSettings::default()
    };
    let with_factor = time_median(repeats, || AdmmWorkspace::new(qp, timing).map(|_| ()))?;
    let mut w = AdmmWorkspace::new(qp, timing)?;
    let rho = w.rho_vector().to_vec();
    let factor = time_median(repeats, || w.set_rho_vector(&rho))?;
    const STEPS: usize = 20;
    let iteration = time_median(repeats, || {
        for _ in 0..STEPS {
            w.step();
            // The state keeps going past a termination: only the cost is measured.
            let _ = w.check(0.0);
        }
        Ok(())
    })? / STEPS as f64;
    let osqp = Admm::new(AdmmSettings {
        check_every: 1,
        kkt,
        ..AdmmSettings::default()
    })?
    .solve(qp, None)?;
    Ok(SolveCosts {
        setup: (with_factor - factor).max(0.0),
        factor,
        iteration,
        osqp: (osqp.iters as f64, osqp.factorisations as f64, osqp.elapsed),
    })
}

/// The wall-clock ratio T_OSQP / T_policy under the cost model T = S + f·F + N·c (`costs` =
/// (S, F, c)) when OSQP's rule takes (N, f_OSQP) = `osqp` and a policy takes N / `fewer`
/// iterations and `factorisations` factorisations.
fn speedup_ceiling(
    (setup, factor, iteration): (f64, f64, f64),
    (iters, osqp_factorisations): (f64, f64),
    factorisations: f64,
    fewer: f64,
) -> f64 {
    (setup + osqp_factorisations * factor + iters * iteration)
        / (setup + factorisations * factor + iters * iteration / fewer)
}

/// `--part qp-costs`: the cost model of an ADMM solve, T = S + f·F + N·c (set-up S, f numeric
/// factorisations of cost F, N iterations of cost c), per QP class and size, and the ceiling it
/// puts on a ρ policy's wall-clock speed-up over OSQP's rule (f_OSQP, N_OSQP):
/// (S + f_OSQP·F + N_OSQP·c) / (S + f·F + N_OSQP·c / k) for k = 3 times fewer iterations, with
/// the same number of factorisations (f = f_OSQP) and with a single one (f = 1).
fn qp_costs(repeats: usize, quiet: bool) -> Result<()> {
    const SIZES: [usize; 3] = [20, 50, 100];
    const INSTANCES: usize = 5;
    println!("ADMM solve costs per QP class and size ({INSTANCES} QPs each, one thread, medians of {repeats}): set-up S (scaling, ordering, symbolic analysis), one numeric KKT factorisation F, one iteration with its termination check c; OSQP's ρ rule with termination checked every iteration: N iterations, f factorisations");
    println!("| class | n | S | F | c | S / c | F / c | N | f | measured | model S + fF + Nc | ceiling at 3× fewer iterations, f factorisations | … with one factorisation |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let bar = crate::progress::bar((QpClass::ALL.len() * SIZES.len()) as u64, "qp-costs", quiet);
    for class in QpClass::ALL {
        for n in SIZES {
            let mut rng = StdRng::seed_from_u64(n as u64);
            let mut all = Vec::with_capacity(INSTANCES);
            for _ in 0..INSTANCES {
                all.push(solve_costs(
                    &class.generate(n, &mut rng)?,
                    repeats,
                    KktForm::Auto,
                )?);
            }
            bar.inc(1);
            let mean =
                |f: &dyn Fn(&SolveCosts) -> f64| all.iter().map(f).sum::<f64>() / INSTANCES as f64;
            let (s, f, c) = (
                mean(&|x| x.setup),
                mean(&|x| x.factor),
                mean(&|x| x.iteration),
            );
            let (iters, facts, measured) = (
                mean(&|x| x.osqp.0),
                mean(&|x| x.osqp.1),
                mean(&|x| x.osqp.2),
            );
            let model = s + facts * f + iters * c;
            let ceiling = |factorisations: f64| {
                speedup_ceiling((s, f, c), (iters, facts), factorisations, 3.0)
            };
            println!(
                "| {} | {n} | {} | {} | {} | {:.0} | {:.1} | {iters:.0} | {facts:.2} | {} | {} | {:.2}× | {:.2}× |",
                class.name(),
                fmt_time(Some(s)),
                fmt_time(Some(f)),
                fmt_time(Some(c)),
                s / c,
                f / c,
                fmt_time(Some(measured)),
                fmt_time(Some(model)),
                ceiling(facts),
                ceiling(1.0),
            );
        }
    }
    bar.finish_and_clear();
    println!("(a policy with 3× fewer iterations that refactors more than OSQP's rule stays below the first ceiling; RLQP's ≥ 2× wall-clock target at 3× fewer iterations needs it above 2)");
    Ok(())
}

/// Iterations of ADMM on `qp` with ρ fixed per kind of row (`rho_eq` on equality rows,
/// `rho_in` on inequality rows, free rows as OSQP sets them), termination checked every
/// iteration; `budget + 1` when not solved within `budget`.
fn iterations_at_fixed_rho(
    qp: &QpProblem,
    rho_eq: f64,
    rho_in: f64,
    budget: usize,
) -> Result<usize> {
    let settings = AdmmSettings {
        adaptive_rho: false,
        check_every: 1,
        max_iters: budget,
        ..AdmmSettings::default()
    };
    let mut w = AdmmWorkspace::new(qp, settings)?;
    let rho: Vec<f64> = w
        .constraint_kinds()
        .into_iter()
        .zip(w.rho_vector())
        .map(|(kind, &r)| match kind {
            RowKind::Equality => rho_eq,
            RowKind::Inequality => rho_in,
            RowKind::Free => r,
        })
        .collect();
    w.set_rho_vector(&rho)?;
    loop {
        w.step();
        if let Some(status) = w.check(0.0) {
            return Ok(match status {
                QpStatus::Solved => w.iterations(),
                _ => budget + 1,
            });
        }
    }
}

/// `--part rho-floor`: per class and size, a grid over constant ρ per kind of row
/// (half-decades, 10⁻³ to 10³ on inequalities and 10⁻² to 10⁴ on equalities, scaled units)
/// for the fewest mean iterations, against OSQP's adaptive rule (both checked every
/// iteration, eps 1e-3). The grid's best is a reference, not a bound: a start policy can also
/// fall between grid points, or vary ρ within a kind or from QP to QP.
fn rho_floor(quiet: bool) -> Result<()> {
    const SIZES: [usize; 3] = [20, 50, 100];
    const INSTANCES: usize = 5;
    // Half-decades; equality rows, where OSQP puts 10³ρ, get a grid 10× higher.
    let grid: Vec<f64> = (-6..=6).map(|k| 10f64.powf(k as f64 / 2.0)).collect();
    let eq_grid_full: Vec<f64> = grid.iter().map(|r| 10.0 * r).collect();
    println!("Fewest ADMM iterations with a constant ρ per kind of row (grid by half-decades, scaled units: 1e-3…1e3 on inequalities, 1e-2…1e4 on equalities; {INSTANCES} QPs per cell, eps 1e-3, termination checked every iteration) against OSQP's adaptive ρ");
    println!("| class | n | OSQP's rule: iterations | best constant ρ: iterations | ρ equality / inequality | ratio |");
    println!("|---|---|---|---|---|---|");
    let bar = crate::progress::bar(
        (QpClass::ALL.len() * SIZES.len()) as u64,
        "rho-floor",
        quiet,
    );
    let osqp = Admm::new(AdmmSettings {
        check_every: 1,
        ..AdmmSettings::default()
    })?;
    for class in QpClass::ALL {
        for n in SIZES {
            let mut rng = StdRng::seed_from_u64(n as u64);
            let qps: Vec<QpProblem> = (0..INSTANCES)
                .map(|_| class.generate(n, &mut rng))
                .collect::<amortize::Result<_>>()?;
            let mut osqp_iters = Vec::with_capacity(INSTANCES);
            for qp in &qps {
                osqp_iters.push(osqp.solve(qp, None)?.iters);
            }
            let osqp_mean = osqp_iters.iter().sum::<usize>() as f64 / INSTANCES as f64;
            // Worse than 3× OSQP's iterations is of no interest: the budget stops it there.
            let budget = 3 * osqp_iters.iter().max().copied().unwrap_or(1);
            let kinds = AdmmWorkspace::new(&qps[0], AdmmSettings::default())?.constraint_kinds();
            let has_equalities = kinds.contains(&RowKind::Equality);
            let has_inequalities = kinds.contains(&RowKind::Inequality);
            // A kind the class does not have needs no grid (1.0 stands in).
            let eq_grid: &[f64] = if has_equalities {
                &eq_grid_full
            } else {
                &grid[6..7]
            };
            let in_grid: &[f64] = if has_inequalities { &grid } else { &grid[6..7] };
            let mut best = (f64::INFINITY, 0.0, 0.0);
            for &rho_eq in eq_grid {
                for &rho_in in in_grid {
                    let mut total = 0usize;
                    for qp in &qps {
                        total += iterations_at_fixed_rho(qp, rho_eq, rho_in, budget)?;
                    }
                    let mean = total as f64 / INSTANCES as f64;
                    if mean < best.0 {
                        best = (mean, rho_eq, rho_in);
                    }
                }
            }
            bar.inc(1);
            let shown = |present: bool, rho: f64| match present {
                true => format!("{rho:.2}"),
                false => "–".into(),
            };
            println!(
                "| {} | {n} | {osqp_mean:.1} | {:.1} | {} / {} | {:.2}× |",
                class.name(),
                best.0,
                shown(has_equalities, best.1),
                shown(has_inequalities, best.2),
                osqp_mean / best.0
            );
        }
    }
    bar.finish_and_clear();
    println!("(the ratio is what the best grid point of one ρ per kind of row saves in iterations; RLQP's target asks for 3×)");
    Ok(())
}

/// QPs per cell of the sparse-KKT tables (`--part kkt` and `--part ordering`).
const SPARSE_INSTANCES: usize = 3;

/// The cells of the sparse-KKT tables: each class `auto` solves in sparse form (all but random
/// and equality QPs) at n = 20, 50, 100 and 200, with [`SPARSE_INSTANCES`] QPs per cell drawn
/// from a seed of n, under a progress bar named `label`.
fn for_each_sparse_cell(
    label: &str,
    quiet: bool,
    mut cell: impl FnMut(QpClass, usize, &[QpProblem]) -> Result<()>,
) -> Result<()> {
    const SIZES: [usize; 4] = [20, 50, 100, 200];
    let classes: Vec<QpClass> = QpClass::ALL
        .into_iter()
        .filter(|c| !matches!(c, QpClass::Random | QpClass::Equality))
        .collect();
    let bar = crate::progress::bar((classes.len() * SIZES.len()) as u64, label, quiet);
    for class in classes {
        for n in SIZES {
            let mut rng = StdRng::seed_from_u64(n as u64);
            let qps = (0..SPARSE_INSTANCES)
                .map(|_| class.generate(n, &mut rng))
                .collect::<amortize::Result<Vec<_>>>()?;
            cell(class, n, &qps)?;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// `--part kkt`: the sparse factor's simplicial and supernodal layouts side by side, per
/// class (those `auto` solves in sparse form) and size: set-up S, one factorisation F, one
/// iteration c, and a whole solve with OSQP's ρ rule (median of `repeats`), with the ratio
/// simplicial / supernodal of the whole solve and the layout `auto` picks.
fn kkt_layouts(repeats: usize, quiet: bool) -> Result<()> {
    const INSTANCES: usize = SPARSE_INSTANCES;
    println!("Sparse KKT factor layouts ({INSTANCES} QPs per cell, one thread, medians of {repeats}; OSQP's ρ rule, termination checked every iteration): simplicial (OSQP's QDLDL layout) against supernodal (dense blocks)");
    println!("| class | n | S simplicial / supernodal | F simplicial / supernodal | c simplicial / supernodal | solve simplicial | solve supernodal | solve ratio | auto picks |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for_each_sparse_cell("kkt", quiet, |class, n, qps| {
        let mut costs = Vec::new();
        let mut solves = Vec::new();
        for form in [KktForm::SparseSimplicial, KktForm::SparseSupernodal] {
            let mut c = (0.0, 0.0, 0.0);
            let mut solve = 0.0;
            for qp in qps {
                let x = solve_costs(qp, repeats, form)?;
                c.0 += x.setup / INSTANCES as f64;
                c.1 += x.factor / INSTANCES as f64;
                c.2 += x.iteration / INSTANCES as f64;
                let admm = Admm::new(AdmmSettings {
                    check_every: 1,
                    kkt: form,
                    ..AdmmSettings::default()
                })?;
                solve +=
                    time_median(repeats, || admm.solve(qp, None).map(|_| ()))? / INSTANCES as f64;
            }
            costs.push(c);
            solves.push(solve);
        }
        let supernodal_picks = qps
            .iter()
            .map(|qp| AdmmWorkspace::new(qp, AdmmSettings::default()))
            .collect::<amortize::Result<Vec<_>>>()?
            .iter()
            .filter(|w| w.kkt_is_supernodal())
            .count();
        let pair = |a: f64, b: f64| format!("{} / {}", fmt_time(Some(a)), fmt_time(Some(b)));
        println!(
            "| {} | {n} | {} | {} | {} | {} | {} | {:.2}× | {} |",
            class.name(),
            pair(costs[0].0, costs[1].0),
            pair(costs[0].1, costs[1].1),
            pair(costs[0].2, costs[1].2),
            fmt_time(Some(solves[0])),
            fmt_time(Some(solves[1])),
            solves[0] / solves[1],
            match supernodal_picks {
                0 => "simplicial".to_string(),
                k if k == INSTANCES => "supernodal".to_string(),
                k => format!("supernodal {k}/{INSTANCES}"),
            },
        );
        Ok(())
    })?;
    println!("(solve ratio > 1: the supernodal layout is faster)");
    Ok(())
}

/// `--part ordering`: the sparse KKT factor under AMD's ordering and under `auto` (the
/// ascending-degree ordering when its factor is certified within 20% of the fewest entries
/// possible, else AMD) side by side, per class solved in sparse form and size: set-up with its
/// first factorisation, a whole solve with OSQP's ρ rule (medians of `repeats`), both as
/// ratios AMD / auto, the factor's entries auto / AMD, and how often `auto` skipped AMD.
fn kkt_orderings(repeats: usize, quiet: bool) -> Result<()> {
    const INSTANCES: usize = SPARSE_INSTANCES;
    println!("Sparse KKT orderings ({INSTANCES} QPs per cell, one thread, medians of {repeats}; OSQP's settings, termination checked every 25 iterations): AMD against auto (the ascending-degree ordering when certified, else AMD)");
    println!("| class | n | set-up + factorisation AMD | … auto | ratio | solve AMD | solve auto | ratio | factor entries auto / AMD | auto skipped AMD |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for_each_sparse_cell("ordering", quiet, |class, n, qps| {
        let (mut setup, mut solve, mut entries) = ([0.0; 2], [0.0; 2], [0.0; 2]);
        let mut skipped = 0;
        for qp in qps {
            // The two orderings alternate within each QP, so that drifts of the machine
            // reach both alike.
            for (k, ordering) in [KktOrdering::Amd, KktOrdering::Auto]
                .into_iter()
                .enumerate()
            {
                let settings = AdmmSettings {
                    ordering,
                    ..AdmmSettings::default()
                };
                setup[k] += time_median(repeats, || AdmmWorkspace::new(qp, settings).map(|_| ()))?
                    / INSTANCES as f64;
                let admm = Admm::new(settings)?;
                solve[k] +=
                    time_median(repeats, || admm.solve(qp, None).map(|_| ()))? / INSTANCES as f64;
                if let Some((by_degree, stored)) = AdmmWorkspace::new(qp, settings)?.kkt_ordering()
                {
                    entries[k] += stored as f64;
                    skipped += usize::from(by_degree);
                }
            }
        }
        println!(
            "| {} | {n} | {} | {} | {:.2}× | {} | {} | {:.2}× | {:.3} | {skipped}/{INSTANCES} |",
            class.name(),
            fmt_time(Some(setup[0])),
            fmt_time(Some(setup[1])),
            setup[0] / setup[1],
            fmt_time(Some(solve[0])),
            fmt_time(Some(solve[1])),
            solve[0] / solve[1],
            entries[1] / entries[0],
        );
        Ok(())
    })?;
    println!("(ratios > 1: auto is faster; factor entries > 1: auto's factor is larger)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{iterations_at_fixed_rho, speedup_ceiling};
    use amortize::solver::qp::{Admm, AdmmSettings, QpClass};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// At OSQP's starting ρ (10³·0.1 on equalities, 0.1 elsewhere) and without adaptation, the
    /// fixed-ρ count is ADMM's own; a ρ far off runs out of the budget and reports budget + 1.
    #[test]
    fn fixed_rho_iterations_match_admm_without_adaptation() {
        let qp = QpClass::Lasso
            .generate(8, &mut StdRng::seed_from_u64(1))
            .unwrap();
        let plain = Admm::new(AdmmSettings {
            adaptive_rho: false,
            check_every: 1,
            ..AdmmSettings::default()
        })
        .unwrap()
        .solve(&qp, None)
        .unwrap();
        assert_eq!(
            iterations_at_fixed_rho(&qp, 100.0, 0.1, 4000).unwrap(),
            plain.iters
        );
        assert_eq!(iterations_at_fixed_rho(&qp, 1e-3, 1e-3, 5).unwrap(), 6);
    }

    #[test]
    fn the_speedup_ceiling_follows_the_cost_model() {
        // Iterations alone: saving 3× of them is 3× faster.
        assert!((speedup_ceiling((0.0, 0.0, 1.0), (90.0, 2.0), 2.0, 3.0) - 3.0).abs() < 1e-12);
        // A set-up of 30 iterations and two factorisations of 10: (30 + 20 + 90) / (30 + 20 + 30).
        let r = speedup_ceiling((30.0, 10.0, 1.0), (90.0, 2.0), 2.0, 3.0);
        assert!((r - 140.0 / 80.0).abs() < 1e-12);
        // Refactoring more than OSQP's rule lowers it, refactoring less raises it.
        assert!(speedup_ceiling((30.0, 10.0, 1.0), (90.0, 2.0), 4.0, 3.0) < r);
        assert!(speedup_ceiling((30.0, 10.0, 1.0), (90.0, 2.0), 1.0, 3.0) > r);
    }
}
