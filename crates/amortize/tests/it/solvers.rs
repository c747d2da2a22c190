use amortize::prelude::*;
use amortize::solver::{
    iterates_in_domain, solve, solve_named, AdamSolver, GradientDescent, Lbfgs, ProxOperator,
    ProximalGradient, Settings, SolverOptions, Status, StepRule, SOLVER_NAMES,
};
use amortize::testing::max_abs_diff;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn quadratic_batch(n: usize) -> Result<(Quadratic, Tensor, Tensor)> {
    let p = Quadratic::new(QuadraticConfig::default())?;
    let x = p
        .sample_contexts(n, &mut StdRng::seed_from_u64(0), &Device::Cpu)?
        .to_dtype(DType::F64)?;
    let y0 = Tensor::zeros((n, 3), DType::F64, &Device::Cpu)?;
    Ok((p, x, y0))
}

/// Gradient methods reach the closed-form y* of the quadratic family.
#[test]
fn gradient_solvers_reach_the_closed_form_solution() -> Result<()> {
    let (p, x, y0) = quadratic_batch(16)?;
    let y_star = p.solve_exact(&x)?.unwrap();
    let settings = Settings {
        tol: 1e-8,
        max_iters: 20_000,
        max_time: None,
    };
    let fixed = GradientDescent::new(&p, StepRule::Fixed { lr: 0.2 });
    let armijo = GradientDescent::new(
        &p,
        StepRule::Armijo {
            initial: 1.0,
            shrink: 0.5,
            c: 1e-4,
        },
    );
    let runs = [
        ("gd", solve(&fixed, &y0, &x, &settings, |_, _| {})?),
        // A line search on values of f cannot certify decrease below ‖∇‖ ≈ √(ε|f|).
        (
            "gd-armijo",
            solve(
                &armijo,
                &y0,
                &x,
                &Settings {
                    tol: 1e-6,
                    ..settings
                },
                |_, _| {},
            )?,
        ),
    ];
    for (name, s) in runs {
        assert_eq!(
            s.status,
            Status::Converged,
            "{name} after {} iterations",
            s.iters
        );
        let e = max_abs_diff(&s.y, &y_star)?;
        assert!(e < 1e-5, "{name}: off y* by {e}");
        assert!(s.iters > 1);
    }
    // Adam with a constant rate hovers at a distance of order lr from y*: a looser tolerance.
    let adam = AdamSolver::new(&p, 0.01);
    let s = solve(
        &adam,
        &y0,
        &x,
        &Settings {
            tol: 1e-3,
            max_iters: 5000,
            max_time: None,
        },
        |_, _| {},
    )?;
    assert_eq!(
        s.status,
        Status::Converged,
        "adam after {} iterations",
        s.iters
    );
    assert!(max_abs_diff(&s.y, &y_star)? < 1e-2);
    Ok(())
}

#[test]
fn armijo_decreases_the_objective_every_step() -> Result<()> {
    let p = Sphere::new(SphereConfig::default())?;
    let x = p
        .sample_contexts(32, &mut StdRng::seed_from_u64(1), &Device::Cpu)?
        .to_dtype(DType::F64)?;
    let y0 = p.sample_contexts(32, &mut StdRng::seed_from_u64(2), &Device::Cpu)?;
    let y0 = y0.narrow(1, 0, 3)?.to_dtype(DType::F64)?;
    let gd = GradientDescent::new(
        &p,
        StepRule::Armijo {
            initial: 4.0,
            shrink: 0.5,
            c: 1e-4,
        },
    );
    let mut values = Vec::new();
    let mut y = y0.clone();
    for _ in 0..40 {
        values.push(p.objective(&p.to_domain(&y)?, &x)?.to_vec1::<f64>()?);
        y = amortize::solver::Solver::step(&gd, y, &x)?;
    }
    for w in values.windows(2) {
        for (a, b) in w[0].iter().zip(&w[1]) {
            assert!(b <= &(a + 1e-12), "objective rose from {a} to {b}");
        }
    }
    let s = solve(
        &gd,
        &y0,
        &x,
        &Settings {
            tol: 1e-7,
            max_iters: 2000,
            max_time: None,
        },
        |_, _| {},
    )?;
    assert_eq!(s.status, Status::Converged);
    let r: Vec<f64> = s.residual.to_vec1()?;
    assert!(r.iter().all(|v| *v <= 1e-7));
    Ok(())
}

#[test]
fn budgets_end_in_a_status_not_an_error() -> Result<()> {
    let (p, x, y0) = quadratic_batch(4)?;
    let gd = GradientDescent::new(&p, StepRule::Fixed { lr: 1e-3 });
    let s = solve(
        &gd,
        &y0,
        &x,
        &Settings {
            tol: 1e-12,
            max_iters: 3,
            max_time: None,
        },
        |_, _| {},
    )?;
    assert_eq!((s.status, s.iters), (Status::MaxIterations, 3));
    let s = solve(
        &gd,
        &y0,
        &x,
        &Settings {
            tol: 1e-12,
            max_iters: 1_000_000,
            max_time: Some(0.0),
        },
        |_, _| {},
    )?;
    assert_eq!(s.status, Status::MaxTime);
    let wild = GradientDescent::new(&p, StepRule::Fixed { lr: 1e6 });
    let s = solve(
        &wild,
        &y0,
        &x,
        &Settings {
            tol: 1e-12,
            max_iters: 1000,
            max_time: None,
        },
        |_, _| {},
    )?;
    assert_eq!(s.status, Status::NumericalError);
    let mut seen = Vec::new();
    solve(
        &gd,
        &y0,
        &x,
        &Settings {
            tol: 0.0,
            max_iters: 2,
            max_time: None,
        },
        |i, r| seen.push((i, r)),
    )?;
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert!(solve(
        &gd,
        &y0,
        &x,
        &Settings {
            tol: f64::NAN,
            ..Default::default()
        },
        |_, _| {}
    )
    .is_err());
    Ok(())
}

/// ISTA and FISTA on quadratic + α‖y‖₁ agree, satisfy the subgradient optimality conditions
/// (checked independently of the solvers), and FISTA needs fewer iterations.
#[test]
fn ista_and_fista_solve_an_l1_problem() -> Result<()> {
    let (p, x, y0) = quadratic_batch(24)?;
    let alpha = 0.3;
    let prox = ProxOperator::L1 { alpha };
    let settings = Settings {
        tol: 1e-9,
        max_iters: 50_000,
        max_time: None,
    };
    let ista = solve(
        &ProximalGradient::ista(&p, prox, 0.2)?,
        &y0,
        &x,
        &settings,
        |_, _| {},
    )?;
    let fista = solve(
        &ProximalGradient::fista(&p, prox, 0.2)?,
        &y0,
        &x,
        &settings,
        |_, _| {},
    )?;
    assert_eq!(
        (ista.status, fista.status),
        (Status::Converged, Status::Converged)
    );
    assert!(
        fista.iters < ista.iters,
        "fista {} vs ista {}",
        fista.iters,
        ista.iters
    );
    assert!(max_abs_diff(&ista.y, &fista.y)? < 1e-7);
    let y: Vec<Vec<f64>> = fista.y.to_vec2()?;
    let g: Vec<Vec<f64>> = p.gradient(&fista.y, &x)?.to_vec2()?;
    let mut zeros = 0;
    for (yr, gr) in y.iter().zip(&g) {
        for (yi, gi) in yr.iter().zip(gr) {
            if yi.abs() > 1e-9 {
                assert!(
                    (gi + alpha * yi.signum()).abs() < 1e-6,
                    "stationarity: {gi} {yi}"
                );
            } else {
                zeros += 1;
                assert!(gi.abs() <= alpha + 1e-6, "subgradient: {gi}");
            }
        }
    }
    assert!(
        zeros > 0,
        "α = {alpha} must zero some coordinates, or the test checks little"
    );
    Ok(())
}

#[test]
fn box_and_elastic_net_proxes_give_feasible_stationary_points() -> Result<()> {
    let (p, x, y0) = quadratic_batch(12)?;
    let (lo, hi) = (-0.2, 0.3);
    let s = solve(
        &ProximalGradient::fista(&p, ProxOperator::Box { lo, hi }, 0.2)?,
        &y0,
        &x,
        &Settings {
            tol: 1e-9,
            max_iters: 20_000,
            max_time: None,
        },
        |_, _| {},
    )?;
    assert_eq!(s.status, Status::Converged);
    let y: Vec<Vec<f64>> = s.y.to_vec2()?;
    let g: Vec<Vec<f64>> = p.gradient(&s.y, &x)?.to_vec2()?;
    for (yr, gr) in y.iter().zip(&g) {
        for (yi, gi) in yr.iter().zip(gr) {
            assert!((lo - 1e-12..=hi + 1e-12).contains(yi));
            // KKT: interior ⇒ ∇ = 0; at lo ⇒ ∇ ≥ 0; at hi ⇒ ∇ ≤ 0.
            if (yi - lo).abs() < 1e-9 {
                assert!(*gi >= -1e-6);
            } else if (yi - hi).abs() < 1e-9 {
                assert!(*gi <= 1e-6);
            } else {
                assert!(gi.abs() < 1e-6);
            }
        }
    }
    let en = ProxOperator::ElasticNet { l1: 0.1, l2: 0.5 };
    let s = solve(
        &ProximalGradient::fista(&p, en, 0.2)?,
        &y0,
        &x,
        &Settings {
            tol: 1e-9,
            max_iters: 20_000,
            max_time: None,
        },
        |_, _| {},
    )?;
    assert_eq!(s.status, Status::Converged);
    assert!(ProxOperator::L1 { alpha: -1.0 }.validate().is_err());
    assert!(ProximalGradient::ista(&p, ProxOperator::NonNegative, 0.0).is_err());
    Ok(())
}

/// A family with only an objective, so gradients come from autodiff (which keeps its graph in
/// second-order mode): f(y; x) = ½‖y − x‖².
struct AutodiffOnly;

impl Problem for AutodiffOnly {
    fn name(&self) -> &str {
        "autodiff-only"
    }
    fn context_dim(&self) -> usize {
        2
    }
    fn solution_dim(&self) -> usize {
        2
    }
    fn sample_contexts(&self, n: usize, _: &mut StdRng, device: &Device) -> Result<Tensor> {
        Ok(Tensor::ones((n, 2), DType::F64, device)?)
    }
    fn objective(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        Ok(y.sub(x)?.sqr()?.sum(1)?.affine(0.5, 0.0)?)
    }
}

/// Steps keep their graph (models unroll them); the solve driver cuts it after every step, or
/// each iterate would carry the graph of all earlier ones (regression: `run toy1d` once took
/// minutes in the speed harness for this reason).
#[test]
fn solve_detaches_iterates_but_steps_keep_their_graph() -> Result<()> {
    use amortize::solver::Solver;
    let p = AutodiffOnly;
    let x = p.sample_contexts(3, &mut StdRng::seed_from_u64(0), &Device::Cpu)?;
    let y0 = Tensor::zeros((3, 2), DType::F64, &Device::Cpu)?;
    let gd = GradientDescent::new(&p, StepRule::Fixed { lr: 0.5 });
    let stepped = gd.step(y0.clone(), &x)?;
    assert!(stepped.track_op(), "a single step stays differentiable");
    let s = solve(
        &gd,
        &y0,
        &x,
        &Settings {
            tol: 1e-10,
            max_iters: 100,
            max_time: None,
        },
        |_, _| {},
    )?;
    assert_eq!(s.status, Status::Converged);
    assert!(!s.y.track_op(), "solve returns a detached iterate");
    Ok(())
}

/// g(y; x) = A y + x with a fixed contraction A; the fixed point is (I − A)⁻¹ x.
struct Affine {
    a: Tensor,
}

impl amortize::solver::FixedPointMap for Affine {
    fn apply(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        Ok(y.matmul(&self.a.t()?)?.add(x)?)
    }
}

#[test]
fn anderson_finds_the_fixed_point_faster_than_plain_iteration() -> Result<()> {
    use amortize::solver::Anderson;
    let d = 6;
    // A = 0.9 · (rotation-like, non-symmetric) so that plain iteration is slow.
    let mut a = vec![0.0f64; d * d];
    for i in 0..d {
        a[i * d + i] = 0.6;
        a[i * d + (i + 1) % d] = 0.3;
    }
    let a = Tensor::from_vec(a, (d, d), &Device::Cpu)?;
    let x = Tensor::from_vec(
        (0..4 * d).map(|i| (i as f64).sin()).collect::<Vec<_>>(),
        (4, d),
        &Device::Cpu,
    )?;
    let y0 = x.zeros_like()?;
    let settings = Settings {
        tol: 1e-10,
        max_iters: 5000,
        max_time: None,
    };
    let plain = solve(
        &Anderson::new(Affine { a: a.clone() }, 0, 1.0, 0.0)?,
        &y0,
        &x,
        &settings,
        |_, _| {},
    )?;
    let aa = solve(
        &Anderson::new(Affine { a: a.clone() }, 5, 1.0, 1e-10)?,
        &y0,
        &x,
        &settings,
        |_, _| {},
    )?;
    assert_eq!(
        (plain.status, aa.status),
        (Status::Converged, Status::Converged)
    );
    assert!(
        aa.iters * 3 < plain.iters,
        "anderson {} vs plain {}",
        aa.iters,
        plain.iters
    );
    // Independent check: (I − A) y = x.
    let lhs = aa.y.sub(&aa.y.matmul(&a.t()?)?)?;
    assert!(max_abs_diff(&lhs, &x)? < 1e-8);
    assert!(Anderson::new(Affine { a }, 3, 0.0, 0.0).is_err());
    Ok(())
}

#[test]
fn newton_solves_a_quadratic_in_one_step_and_its_hessian_is_right() -> Result<()> {
    use amortize::solver::Newton;
    let (p, x, y0) = quadratic_batch(5)?;
    let newton = Newton::new(&p, 0.0, 0.1)?;
    let s = solve(
        &newton,
        &y0,
        &x,
        &Settings {
            tol: 1e-10,
            max_iters: 10,
            max_time: None,
        },
        |_, _| {},
    )?;
    assert_eq!((s.status, s.iters), (Status::Converged, 1));
    assert!(max_abs_diff(&s.y, &p.solve_exact(&x)?.unwrap())? < 1e-10);
    // The autodiff Hessian of the sphere against finite differences of its closed-form gradient.
    let sphere = Sphere::new(SphereConfig::default())?;
    let xs = sphere
        .sample_contexts(2, &mut StdRng::seed_from_u64(4), &Device::Cpu)?
        .to_dtype(DType::F64)?;
    let y = Tensor::new(&[[0.3f64, -0.8, 0.5], [0.9, 0.1, -0.2]], &Device::Cpu)?;
    let (_, h) = Newton::new(&sphere, 0.0, 0.1)?.gradient_and_hessian(&y, &xs)?;
    let eps = 1e-6;
    for k in 0..3 {
        let mut e = vec![0.0; 6];
        e[k] = eps;
        e[3 + k] = eps;
        let e = Tensor::from_vec(e, (2, 3), &Device::Cpu)?;
        let gp: Vec<f64> = sphere
            .domain_gradient(&(&y + &e)?, &xs)?
            .flatten_all()?
            .to_vec1()?;
        let gm: Vec<f64> = sphere
            .domain_gradient(&(&y - &e)?, &xs)?
            .flatten_all()?
            .to_vec1()?;
        for i in 0..2 {
            for j in 0..3 {
                let fd = (gp[i * 3 + j] - gm[i * 3 + j]) / (2.0 * eps);
                let got = h[i * 9 + k * 3 + j];
                assert!((fd - got).abs() < 1e-5, "H[{i}][{k}][{j}]: {got} vs {fd}");
            }
        }
    }
    assert!(Newton::new(&p, -1.0, 0.1).is_err());
    Ok(())
}

#[test]
fn cem_and_dcem_find_global_minima() -> Result<()> {
    use amortize::solver::CrossEntropyMethod;
    let (p, x, y0) = quadratic_batch(6)?;
    // The initial spread must cover the solutions: CEM's spread shrinks geometrically.
    let cem = CrossEntropyMethod::new(&p, 64, 8, 0.5, 5.0, 0)?;
    // Sampling limits its precision: the spread collapses around residuals of about 1e-3.
    let s = solve(
        &cem,
        &y0,
        &x,
        &Settings {
            tol: 1e-3,
            max_iters: 500,
            max_time: None,
        },
        |_, _| {},
    )?;
    assert_eq!(s.status, Status::Converged, "after {} iterations", s.iters);
    assert!(max_abs_diff(&s.y, &p.solve_exact(&x)?.unwrap())? < 1e-3);
    // On the sphere CEM is global: it matches the exact solver where single-start GD may not.
    let sphere = Sphere::new(SphereConfig::default())?;
    let xs = sphere
        .sample_contexts(16, &mut StdRng::seed_from_u64(3), &Device::Cpu)?
        .to_dtype(DType::F64)?;
    let y_star = sphere.solve_exact(&xs)?.unwrap();
    let f_star: Vec<f64> = sphere.objective(&y_star, &xs)?.to_vec1()?;
    let start = Tensor::zeros((16, 3), DType::F64, &Device::Cpu)?.affine(0.0, 1e-3)?;
    let settings = Settings {
        tol: 0.0,
        max_iters: 60,
        max_time: None,
    };
    for (name, solver) in [
        (
            "cem",
            CrossEntropyMethod::new(&sphere, 128, 12, 0.1, 1.0, 1)?,
        ),
        (
            "dcem",
            CrossEntropyMethod::new(&sphere, 128, 12, 0.1, 1.0, 1)?.soft(0.01)?,
        ),
    ] {
        let s = solve(&solver, &start, &xs, &settings, |_, _| {})?;
        let f: Vec<f64> = s.value.to_vec1()?;
        let gap = f
            .iter()
            .zip(&f_star)
            .map(|(a, b)| a - b)
            .fold(0.0, f64::max);
        assert!(gap < 1e-3, "{name}: worst gap {gap}");
    }
    assert!(CrossEntropyMethod::new(&p, 8, 8, 0.1, 1.0, 0).is_err());
    Ok(())
}

/// The step size suited to each zoo family (about 1/L for its gradient's Lipschitz constant L)
/// and a lower bound μ on its curvature at y* (a residual r certifies ‖y − y*‖ ≲ r/μ).
fn zoo_step_and_curvature(config: &ProblemConfig) -> (f64, f64) {
    match config {
        ProblemConfig::Toy1d(_) => (50.0, 1.0 / 160.0),
        ProblemConfig::Quadratic(_) => (0.2, 1.0),
        _ => (0.1, 0.3),
    }
}

/// Every named solver on every zoo family with an exact solver, started near y* (a 0.1
/// perturbation, inside the basin of the global minimum of the non-convex sphere), must land
/// on y*. CEM starts from the perturbed point too but searches globally.
#[test]
fn every_solver_reaches_the_known_solutions_of_the_zoo() -> Result<()> {
    let mut checked = 0;
    for config in amortize::testing::problem_zoo() {
        let problem = config.build()?;
        let p = problem.as_ref();
        let (x, _) = amortize::testing::sample_pair(p, 6, 5)?;
        let Some(y_star) = p.solve_exact(&x)? else {
            continue;
        };
        let mut rng = StdRng::seed_from_u64(9);
        let noise: Vec<f64> = (0..y_star.elem_count())
            .map(|_| {
                0.1 * rand_distr::Distribution::<f64>::sample(&rand_distr::StandardNormal, &mut rng)
            })
            .collect();
        let y0 = y_star.add(&Tensor::from_vec(noise, y_star.shape(), &Device::Cpu)?)?;
        let has_domain_map = matches!(config, ProblemConfig::Sphere(_));
        // With the hard minimum (γ = 0) the global minimiser can sit on a kink where two
        // components tie: no gradient residual certifies it, so only CEM runs there.
        let nonsmooth = matches!(&config, ProblemConfig::Sphere(c) if c.gamma == 0.0);
        let (step, curvature) = zoo_step_and_curvature(&config);
        // The lasso is nonsmooth too: proximal methods on its smooth part with its ℓ1 prox.
        if let Some(lasso) = p.as_lasso() {
            for name in ["ista", "fista"] {
                let opts = SolverOptions {
                    lr: 1.0 / lasso.lipschitz(),
                    l1: lasso.alpha(),
                    ..SolverOptions::default()
                };
                let settings = Settings {
                    tol: 1e-9,
                    max_iters: 50_000,
                    max_time: None,
                };
                let s = solve_named(name, lasso.least_squares(), &y0, &x, &settings, &opts)?;
                assert_eq!(s.status, Status::Converged, "{name} on lasso");
                let err = max_abs_diff(&s.y, &y_star)?;
                assert!(err < 1e-7, "{name} on lasso: off y* by {err}");
                checked += 1;
            }
            continue;
        }
        for name in SOLVER_NAMES {
            if nonsmooth && !name.contains("cem") {
                continue;
            }
            // Proximal methods need the constraints in their prox, not in a domain map; Newton
            // needs a non-singular Hessian, which f(y/‖y‖) lacks along y.
            if has_domain_map && (iterates_in_domain(name) || name == "newton") {
                continue;
            }
            let (lr, tol, max_iters, close) = match name {
                "adam" => (0.003, 1e-3 * curvature, 20_000, 3e-2),
                "cem" | "dcem" => (step, 1e-3 * curvature, 60, 3e-2),
                "newton" => (step, 1e-9, 100, 1e-5),
                // Armijo's test stalls once c·t·‖∇‖² drops below f's rounding (‖∇‖ ≈ 1e-6 here).
                "gd-armijo" | "lbfgs" => (1.0, 1e-5, 50_000, (2e-5 / curvature).max(1e-4)),
                _ => (step, 1e-8, 50_000, 1e-4),
            };
            let opts = SolverOptions {
                lr,
                l1: 0.0,
                ..SolverOptions::default()
            };
            let settings = Settings {
                tol,
                max_iters,
                max_time: None,
            };
            let s = solve_named(name, p, &y0, &x, &settings, &opts)?;
            let y = if iterates_in_domain(name) {
                s.y.clone()
            } else {
                p.to_domain(&s.y)?
            };
            let err = max_abs_diff(&y, &y_star)?;
            assert!(
                err < close,
                "{name} on {}: ‖y − y*‖∞ = {err} after {} iterations ({:?})",
                p.name(),
                s.iters,
                s.status
            );
            if !name.contains("cem") {
                assert_eq!(s.status, Status::Converged, "{name} on {}", p.name());
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} solver/problem pairs ran");
    Ok(())
}

/// The Rosenbrock family f(y; a, b) = (a − y₁)² + b(y₂ − y₁²)², minimised at (a, a²): a
/// classic hard case for quasi-Newton methods (a curved narrow valley).
struct Rosenbrock;

impl Problem for Rosenbrock {
    fn name(&self) -> &str {
        "rosenbrock"
    }
    fn context_dim(&self) -> usize {
        2
    }
    fn solution_dim(&self) -> usize {
        2
    }
    fn sample_contexts(&self, n: usize, rng: &mut StdRng, device: &Device) -> Result<Tensor> {
        use rand::Rng;
        let data: Vec<f32> = (0..n)
            .flat_map(|_| {
                [
                    rng.random_range(0.5..1.5f32),
                    rng.random_range(5.0..100.0f32),
                ]
            })
            .collect();
        Ok(Tensor::from_vec(data, (n, 2), device)?)
    }
    fn objective(&self, y: &Tensor, x: &Tensor) -> Result<Tensor> {
        let (y1, y2) = (y.narrow(1, 0, 1)?, y.narrow(1, 1, 1)?);
        let (a, b) = (x.narrow(1, 0, 1)?, x.narrow(1, 1, 1)?);
        let t1 = a.sub(&y1)?.sqr()?;
        let t2 = y2.sub(&y1.sqr()?)?.sqr()?.mul(&b)?;
        Ok(t1.add(&t2)?.squeeze(1)?)
    }
}

/// argmin's L-BFGS (More–Thuente line search) on one instance, from `y0`.
fn argmin_lbfgs(problem: &dyn Problem, x: &[f64], y0: &[f64]) -> Vec<f64> {
    use argmin::core::{CostFunction, Executor, Gradient};
    use argmin::solver::linesearch::MoreThuenteLineSearch;
    use argmin::solver::quasinewton::LBFGS;
    struct One<'a> {
        problem: &'a dyn Problem,
        x: Tensor,
    }
    impl One<'_> {
        fn row(&self, y: &[f64]) -> Tensor {
            Tensor::from_vec(y.to_vec(), (1, y.len()), &Device::Cpu).unwrap()
        }
    }
    impl CostFunction for One<'_> {
        type Param = Vec<f64>;
        type Output = f64;
        fn cost(&self, y: &Vec<f64>) -> std::result::Result<f64, argmin::core::Error> {
            let f = self.problem.objective(&self.row(y), &self.x).unwrap();
            Ok(f.to_vec1::<f64>().unwrap()[0])
        }
    }
    impl Gradient for One<'_> {
        type Param = Vec<f64>;
        type Gradient = Vec<f64>;
        fn gradient(&self, y: &Vec<f64>) -> std::result::Result<Vec<f64>, argmin::core::Error> {
            let g = self.problem.gradient(&self.row(y), &self.x).unwrap();
            Ok(g.flatten_all().unwrap().to_vec1::<f64>().unwrap())
        }
    }
    let one = One {
        problem,
        x: Tensor::from_vec(x.to_vec(), (1, x.len()), &Device::Cpu).unwrap(),
    };
    let solver = LBFGS::new(MoreThuenteLineSearch::new(), 10)
        .with_tolerance_grad(1e-10)
        .unwrap();
    let res = Executor::new(one, solver)
        .configure(|s| s.param(y0.to_vec()).max_iters(500))
        .run()
        .unwrap();
    res.state.best_param.unwrap()
}

/// Our batched L-BFGS and argmin's agree on the quadratic family and on Rosenbrock valleys,
/// and both find the known minimisers.
#[test]
fn lbfgs_agrees_with_argmin() -> Result<()> {
    let quadratic = Quadratic::new(QuadraticConfig::default())?;
    type KnownMinimiser = Option<fn(&[f64]) -> Vec<f64>>;
    let problems: [(&dyn Problem, KnownMinimiser); 2] = [
        (&quadratic, None),
        (&Rosenbrock, Some(|x: &[f64]| vec![x[0], x[0] * x[0]])),
    ];
    for (problem, known) in problems {
        let (x, y0) = amortize::testing::sample_pair(problem, 5, 2)?;
        let y0 = y0.affine(1.5, -0.3)?;
        let settings = Settings {
            tol: 1e-9,
            max_iters: 500,
            max_time: None,
        };
        let ours = solve(&Lbfgs::new(problem, 10)?, &y0, &x, &settings, |_, _| {})?;
        assert_eq!(ours.status, Status::Converged, "{}", problem.name());
        let exact = problem.solve_exact(&x)?;
        let xs: Vec<Vec<f64>> = x.to_vec2()?;
        let y0s: Vec<Vec<f64>> = y0.to_vec2()?;
        let ys: Vec<Vec<f64>> = ours.y.to_vec2()?;
        for i in 0..xs.len() {
            let theirs = argmin_lbfgs(problem, &xs[i], &y0s[i]);
            for (a, b) in ys[i].iter().zip(&theirs) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "{}: ours {a}, argmin {b}",
                    problem.name()
                );
            }
            let truth = match (known, &exact) {
                (Some(f), _) => f(&xs[i]),
                (None, Some(e)) => e.get(i)?.to_vec1()?,
                (None, None) => unreachable!("every problem here has a known solution"),
            };
            for (a, t) in ys[i].iter().zip(&truth) {
                assert!((a - t).abs() < 1e-5, "{}: {a} vs y* {t}", problem.name());
            }
        }
        // Quasi-Newton beats plain gradient descent by a wide margin on these.
        assert!(
            ours.iters < 200,
            "{}: {} iterations",
            problem.name(),
            ours.iters
        );
    }
    Ok(())
}

/// The Lasso's smooth part: gradient against finite differences, L against ‖W‖₂² bounds, and
/// FISTA on it with the ℓ1 prox beats ISTA; a zero dictionary column is refused.
#[test]
fn least_squares_gradient_lipschitz_and_lasso_solves() -> Result<()> {
    use amortize::problem::LeastSquares;
    let p = LeastSquares::lasso_benchmark(8, 16, 1)?;
    let (x, codes) = p.sample_with_codes(4, &mut StdRng::seed_from_u64(2), &Device::Cpu)?;
    let x = x.to_dtype(DType::F64)?;
    let y = codes.to_dtype(DType::F64)?.affine(0.5, 0.1)?;
    let g = p.gradient(&y, &x)?;
    let fd = amortize::testing::finite_difference_grad(&y, 1e-6, |y| {
        Ok(p.objective(y, &x)?.sum_all()?.to_scalar::<f64>()?)
    })?;
    assert!(max_abs_diff(&g, &fd)? < 1e-6);
    // ‖W‖_F² / rank ≤ σ_max² ≤ ‖W‖_F² = n (unit-norm columns).
    let l = p.lipschitz()?;
    assert!((16.0 / 8.0..=16.0).contains(&l), "L = {l}");
    let settings = Settings {
        tol: 1e-8,
        max_iters: 20_000,
        max_time: None,
    };
    let prox = ProxOperator::L1 { alpha: 0.1 };
    let y0 = Tensor::zeros((4, 16), DType::F64, &Device::Cpu)?;
    let ista = solve(
        &ProximalGradient::ista(&p, prox, 1.0 / l)?,
        &y0,
        &x,
        &settings,
        |_, _| {},
    )?;
    let fista = solve(
        &ProximalGradient::fista(&p, prox, 1.0 / l)?,
        &y0,
        &x,
        &settings,
        |_, _| {},
    )?;
    assert_eq!(
        (ista.status, fista.status),
        (Status::Converged, Status::Converged)
    );
    assert!(fista.iters < ista.iters);
    assert!(max_abs_diff(&ista.y, &fista.y)? < 1e-6);
    let mut w: Vec<f64> = p.dictionary().flatten_all()?.to_vec1()?;
    for i in 0..8 {
        w[i * 16 + 3] = 0.0;
    }
    let w = Tensor::from_vec(w, (8, 16), &Device::Cpu)?;
    let err = LeastSquares::new(&w, 0.1, 0.01).unwrap_err().to_string();
    assert!(err.contains("column 3 is zero"), "{err}");
    Ok(())
}

/// The fused Lasso path takes the same iterations as the tensor ISTA/FISTA (with and without
/// restart) up to f32 rounding, on several blocks and threads, stops rows early at a tolerance,
/// and refuses bad input.
#[test]
fn fused_lasso_matches_the_tensor_solvers() -> Result<()> {
    use amortize::problem::LeastSquares;
    use amortize::solver::{FusedLasso, Solver};
    let p = LeastSquares::lasso_benchmark(16, 48, 3)?;
    let batch = 300; // more than one block of rows
    let (x, _) = p.sample_with_codes(batch, &mut StdRng::seed_from_u64(4), &Device::Cpu)?;
    let step = 1.0 / p.lipschitz()?;
    let prox = ProxOperator::L1 { alpha: 0.1 };
    let y0 = Tensor::zeros((batch, 48), DType::F32, &Device::Cpu)?;
    let x64 = x.to_dtype(DType::F64)?;
    let cases = [
        (ProximalGradient::ista(&p, prox, step)?, false, false),
        (
            ProximalGradient::fista(&p, prox, step)?.with_restart(false),
            true,
            false,
        ),
        (ProximalGradient::fista(&p, prox, step)?, true, true),
    ];
    for (tensor, accelerated, restart) in cases {
        let fused = FusedLasso::new(&p, 0.1, step, accelerated, restart)?;
        let mut state = tensor.init(&y0.to_dtype(DType::F64)?, &x64)?;
        for _ in 0..30 {
            state = tensor.step(state, &x64)?;
        }
        let (y, report) = fused.solve(&x, &y0, 30, 0.0)?;
        let e = max_abs_diff(&y, tensor.iterate(&state))?;
        assert!(
            e < 1e-4,
            "{} (restart {restart}): off by {e}",
            tensor.name()
        );
        assert!(report.iters.iter().all(|&k| k == 30));
        // Two threads give the same answer.
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let mut y2 = vec![0.0f32; batch * 48];
        fused.run(&xs, &mut y2, 30, 0.0, 2)?;
        assert_eq!(y2, y.flatten_all()?.to_vec1::<f32>()?);
    }
    // A tolerance stops rows on their own, each below it.
    let fista = FusedLasso::new(&p, 0.1, step, true, true)?;
    let (_, report) = fista.solve(&x, &y0, 5000, 1e-3)?;
    assert!(report.residual.iter().all(|&r| r <= 1e-3));
    let (lo, hi) = (
        report.iters.iter().min().unwrap(),
        report.iters.iter().max().unwrap(),
    );
    assert!(lo < hi && *hi < 5000, "iterations {lo}..{hi}");
    let mut y = vec![0.0f32; 48];
    assert!(fista.run(&[f32::NAN; 16], &mut y, 10, 0.0, 1).is_err());
    assert!(fista.run(&[0.0; 15], &mut y, 10, 0.0, 1).is_err());
    Ok(())
}
