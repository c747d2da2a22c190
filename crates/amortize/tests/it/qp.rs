use amortize::linalg::CsrMatrix;
use amortize::solver::qp::{Admm, AdmmSettings, AdmmWorkspace, QpData, QpProblem, QpStatus};
use amortize::Result;
use clarabel::algebra::CscMatrix;
use clarabel::solver::{
    DefaultSettingsBuilder, DefaultSolver, IPSolver, NonnegativeConeT, SolverStatus,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The QP solved by Clarabel (interior point, independent of ADMM): l ≤ Ay ≤ u becomes
/// Ay + s = u and −Ay + s = −l with s ≥ 0, infinite bounds dropped. Returns (y, objective).
pub(crate) fn clarabel_solve(qp: &QpProblem) -> (Vec<f64>, f64) {
    let (n, m) = (qp.n(), qp.m());
    let p = qp.p().to_dense();
    let a = qp.a().to_dense();
    let p_rows: Vec<Vec<f64>> = (0..n).map(|i| p[i * n..(i + 1) * n].to_vec()).collect();
    let mut rows = Vec::new();
    let mut b = Vec::new();
    for i in 0..m {
        let row = &a[i * n..(i + 1) * n];
        if qp.u()[i].is_finite() {
            rows.push(row.to_vec());
            b.push(qp.u()[i]);
        }
        if qp.l()[i].is_finite() {
            rows.push(row.iter().map(|v| -v).collect());
            b.push(-qp.l()[i]);
        }
    }
    let pm = CscMatrix::from(&p_rows).to_triu();
    let am = CscMatrix::from(&rows);
    let cones = [NonnegativeConeT(b.len())];
    let settings = DefaultSettingsBuilder::default()
        .verbose(false)
        .tol_gap_abs(1e-10)
        .tol_gap_rel(1e-10)
        .tol_feas(1e-10)
        .build()
        .unwrap();
    let mut solver = DefaultSolver::new(&pm, qp.q(), &am, &b, &cones, settings).unwrap();
    solver.solve();
    assert_eq!(solver.solution.status, SolverStatus::Solved);
    (solver.solution.x.clone(), solver.solution.obj_val)
}

/// ADMM at OSQP's default accuracy and at a tight one agrees with Clarabel on random QPs of
/// OSQP's benchmark class: objective to about the tolerance, and the solution itself when tight.
#[test]
fn admm_matches_clarabel_on_random_qps() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(3);
    let tight = Admm::new(AdmmSettings {
        max_iters: 50_000,
        ..AdmmSettings::accurate(1e-9)
    })?;
    let default = Admm::default();
    for n in [5, 10, 30] {
        for _ in 0..3 {
            let qp = QpProblem::random(n, 10 * n, 0.15, &mut rng)?;
            let (y_ref, obj_ref) = clarabel_solve(&qp);
            let s = tight.solve(&qp, None)?;
            assert_eq!(s.status, QpStatus::Solved, "n = {n}: {:?}", s.status);
            let dy =
                s.y.iter()
                    .zip(&y_ref)
                    .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(dy < 1e-6, "n = {n}: ‖y − y_clarabel‖∞ = {dy}");
            assert!(qp.primal_residual(&s.y) < 1e-8);
            assert!(qp.dual_residual(&s.y, &s.lambda) < 1e-7);
            let loose = default.solve(&qp, None)?;
            assert_eq!(loose.status, QpStatus::Solved);
            let rel = (loose.objective - obj_ref).abs() / obj_ref.abs().max(1.0);
            assert!(rel < 1e-2, "n = {n}: relative objective error {rel}");
            assert!(loose.iters < s.iters);
        }
    }
    Ok(())
}

/// An equality-constrained QP with a closed-form solution: min ½‖y‖² − cᵀy s.t. Σy = 1 has
/// y = c + (1 − Σc)/n, and box rows that are free (±∞) stay inactive.
#[test]
fn admm_solves_an_equality_constrained_qp_exactly() -> Result<()> {
    let n = 4;
    let c = [0.3, -0.2, 0.5, 0.1];
    let mut p = vec![0.0; n * n];
    for i in 0..n {
        p[i * n + i] = 1.0;
    }
    let mut a = vec![1.0; n];
    a.extend_from_slice(&[1.0, 0.0, 0.0, 0.0]);
    let qp = QpProblem::from_dense(
        &p,
        c.iter().map(|v| -v).collect(),
        &a,
        vec![1.0, f64::NEG_INFINITY],
        vec![1.0, f64::INFINITY],
    )?;
    let s = Admm::new(AdmmSettings {
        eps_abs: 1e-10,
        eps_rel: 1e-10,
        ..AdmmSettings::default()
    })?
    .solve(&qp, None)?;
    assert_eq!(s.status, QpStatus::Solved);
    let shift = (1.0 - c.iter().sum::<f64>()) / n as f64;
    for (yi, ci) in s.y.iter().zip(c) {
        assert!((yi - (ci + shift)).abs() < 1e-8, "{yi} vs {}", ci + shift);
    }
    Ok(())
}

/// min ½‖y‖² s.t. y₁ ≥ 1, y₁ + y₂ ≤ −1 and y₂ ≥ 0: no feasible point.
pub(crate) fn primal_infeasible_qp() -> Result<QpProblem> {
    QpProblem::from_dense(
        &[1.0, 0.0, 0.0, 1.0],
        vec![0.0, 0.0],
        &[1.0, 0.0, 1.0, 1.0, 0.0, 1.0],
        vec![1.0, f64::NEG_INFINITY, 0.0],
        vec![f64::INFINITY, -1.0, f64::INFINITY],
    )
}

/// Infeasible QPs end in the matching status with a valid certificate.
#[test]
fn admm_detects_primal_and_dual_infeasibility() -> Result<()> {
    let qp = primal_infeasible_qp()?;
    let s = Admm::default().solve(&qp, None)?;
    assert_eq!(s.status, QpStatus::PrimalInfeasible);
    // The certificate δλ satisfies Aᵀδλ ≈ 0 and uᵀδλ₊ + lᵀδλ₋ < 0.
    let cert = s.certificate.expect("a certificate");
    let mut at = vec![0.0; 2];
    qp.a().mul_transpose_vec(&cert, &mut at);
    assert!(at.iter().all(|v| v.abs() < 1e-3), "Aᵀδλ = {at:?}");
    let support: f64 = (0..3)
        .map(|i| {
            if cert[i] > 0.0 {
                qp.u()[i] * cert[i]
            } else if cert[i] < 0.0 {
                qp.l()[i] * cert[i]
            } else {
                0.0
            }
        })
        .sum();
    assert!(support < 0.0, "support {support}");

    // min −y₁ + y₂²/2 s.t. y₁ ≥ 0: unbounded along y₁.
    let qp = QpProblem::from_dense(
        &[0.0, 0.0, 0.0, 1.0],
        vec![-1.0, 0.0],
        &[1.0, 0.0],
        vec![0.0],
        vec![f64::INFINITY],
    )?;
    let s = Admm::default().solve(&qp, None)?;
    assert_eq!(s.status, QpStatus::DualInfeasible);
    let cert = s.certificate.expect("a certificate");
    assert!(cert[0] > 0.99 && cert[1].abs() < 1e-3, "δy = {cert:?}");
    Ok(())
}

/// Starting from a solution, ADMM stops at once; from a cold start it needs many iterations.
#[test]
fn warm_start_from_a_solution_converges_immediately() -> Result<()> {
    let qp = QpProblem::random(20, 200, 0.15, &mut StdRng::seed_from_u64(7))?;
    let admm = Admm::default();
    let cold = admm.solve(&qp, None)?;
    assert_eq!(cold.status, QpStatus::Solved);
    let warm = admm.solve(&qp, Some((&cold.y, &cold.lambda)))?;
    assert_eq!(warm.status, QpStatus::Solved);
    assert!(
        warm.iters * 5 <= cold.iters,
        "warm {} vs cold {}",
        warm.iters,
        cold.iters
    );
    assert!(admm.solve(&qp, Some((&cold.y[..3], &cold.lambda))).is_err());
    Ok(())
}

/// ρ per constraint can be set between iterations (the hook for learned step sizes) and a
/// budget ends in a status; threads do not change the answers.
#[test]
fn workspace_steps_with_custom_rho_and_batches_agree_across_threads() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(11);
    let qps: Vec<QpProblem> = (0..6)
        .map(|_| QpProblem::random(8, 80, 0.15, &mut rng))
        .collect::<Result<_>>()?;
    let mut w = AdmmWorkspace::new(&qps[0], AdmmSettings::default())?;
    assert!(w.set_rho_vector(&[1.0; 3]).is_err());
    assert!(w.set_rho_vector(&vec![f64::NAN; 80]).is_err());
    w.set_rho_vector(&vec![0.5; 80])?;
    let (p0, d0) = w.current_residuals();
    for _ in 0..50 {
        w.step();
    }
    let (p1, d1) = w.current_residuals();
    assert!(p1.max(d1) < p0.max(d0), "{p1} {d1} vs {p0} {d0}");

    let admm = Admm::new(AdmmSettings {
        max_iters: 3,
        ..AdmmSettings::default()
    })?;
    assert_eq!(admm.solve(&qps[0], None)?.status, QpStatus::MaxIterations);

    let one = Admm::default().solve_batch(&qps, 1)?;
    let two = Admm::default().solve_batch(&qps, 2)?;
    for (a, b) in one.iter().zip(&two) {
        assert_eq!(a.y, b.y);
    }
    Ok(())
}

/// Bad QPs are refused with messages naming the problem.
#[test]
fn bad_qps_are_refused_with_clear_errors() {
    let eye = [1.0, 0.0, 0.0, 1.0];
    let a = [1.0, 1.0];
    let err = |r: Result<QpProblem>| r.expect_err("must be refused").to_string();
    let msg = err(QpProblem::from_dense(
        &[1.0, 0.0, 0.0, -1.0],
        vec![0.0; 2],
        &a,
        vec![0.0],
        vec![1.0],
    ));
    assert!(msg.contains("positive semidefinite"), "{msg}");
    // A sparse P (diagonal, 8×8) goes through the sparse LDLᵀ check instead.
    let mut diag = vec![0.0; 64];
    for i in 0..8 {
        diag[i * 9] = if i == 5 { -0.5 } else { 1.0 };
    }
    let msg = err(QpProblem::from_dense(
        &diag,
        vec![0.0; 8],
        &[1.0; 8],
        vec![0.0],
        vec![1.0],
    ));
    assert!(msg.contains("positive semidefinite"), "{msg}");
    diag[45] = 0.0;
    QpProblem::from_dense(&diag, vec![0.0; 8], &[1.0; 8], vec![0.0], vec![1.0])
        .expect("a PSD diagonal P with a zero entry is convex");
    let msg = err(QpProblem::from_dense(
        &[1.0, 0.5, 0.0, 1.0],
        vec![0.0; 2],
        &a,
        vec![0.0],
        vec![1.0],
    ));
    assert!(msg.contains("symmetric"), "{msg}");
    let msg = err(QpProblem::from_dense(
        &eye,
        vec![0.0; 2],
        &a,
        vec![2.0],
        vec![1.0],
    ));
    assert!(msg.contains("exceeds upper bound"), "{msg}");
    let msg = err(QpProblem::from_dense(
        &eye,
        vec![f64::NAN, 0.0],
        &a,
        vec![0.0],
        vec![1.0],
    ));
    assert!(msg.contains("NaN"), "{msg}");
    let msg = err(QpProblem::from_dense(
        &eye,
        vec![0.0; 2],
        &a,
        vec![f64::NAN],
        vec![1.0],
    ));
    assert!(msg.contains("NaN"), "{msg}");
    let msg = err(QpProblem::new(
        CsrMatrix::from_dense(&eye, 2, 2).unwrap(),
        vec![0.0; 3],
        CsrMatrix::from_dense(&a, 1, 2).unwrap(),
        vec![0.0],
        vec![1.0],
    ));
    assert!(msg.contains("P is 2×2 but q has length 3"), "{msg}");
    let msg = err(QpProblem::from_dense(
        &eye,
        vec![0.0; 2],
        &a,
        vec![0.0],
        vec![1.0, 2.0],
    ));
    assert!(msg.contains("expected A to be"), "{msg}");
    let data: QpData = serde_json::from_str(
        r#"{"P": [[1, 0], [0]], "q": [0, 0], "A": [[1, 1]], "l": [null], "u": [1]}"#,
    )
    .unwrap();
    let msg = data.to_problem().unwrap_err().to_string();
    assert!(msg.contains("row 1 of P has 1 entries"), "{msg}");
    assert!(Admm::new(AdmmSettings {
        alpha: 2.5,
        ..AdmmSettings::default()
    })
    .is_err());
}

/// Every QP class generates valid QPs that ADMM (OSQP's rule) solves, and agrees with Clarabel.
#[test]
fn qp_classes_are_solved_and_agree_with_clarabel() -> Result<()> {
    use amortize::solver::qp::QpClass;
    let mut rng = StdRng::seed_from_u64(11);
    let tight = Admm::new(AdmmSettings {
        max_iters: 50_000,
        ..AdmmSettings::accurate(1e-8)
    })?;
    for class in QpClass::ALL {
        for _ in 0..2 {
            let qp = class.generate(6, &mut rng)?;
            let s = tight.solve(&qp, None)?;
            assert_eq!(
                s.status,
                QpStatus::Solved,
                "{}: {:?}",
                class.name(),
                s.status
            );
            let (_, obj_ref) = clarabel_solve(&qp);
            let rel = (s.objective - obj_ref).abs() / obj_ref.abs().max(1.0);
            assert!(
                rel < 1e-5,
                "{}: relative objective error {rel}",
                class.name()
            );
        }
    }
    assert!(QpClass::Svm.generate(1, &mut rng).is_err());
    Ok(())
}

/// The ADMM iterates are OSQP's: at its default settings (with termination checked every
/// iteration) this ADMM takes the iterations of the OSQP C solver (exactly on these QPs when
/// measured; the test leaves 2 iterations of slack for rounding) (osqp 1.1.3 from
/// PyPI, recorded with check_termination = 1, eps_abs = eps_rel = 1e-3, on these QPs as
/// `bench/baselines/osqp_classes.py` reads them), at a fixed ρ and with OSQP's adaptive ρ,
/// and reaches its objective. Control QPs (q = 0) check OSQP's cost scaling: scaling a small
/// P up when q = 0 took 455 and 2155 iterations at the fixed ρ instead of 99 and 166. OSQP 1.x
/// adapts ρ every 50 iterations; every 25 gave 34 iterations instead of 57 on the first QP.
#[test]
fn admm_takes_the_iterations_of_osqp_c() -> Result<()> {
    use amortize::solver::qp::QpClass;
    // (class, n, seed, OSQP C iterations at ρ = 0.1 fixed, with adaptive ρ, its objective
    // with adaptive ρ)
    for (class, n, seed, fixed, adaptive, objective) in [
        (QpClass::Control, 10, 11, 99, 57, 91.18918),
        (QpClass::Control, 20, 12, 166, 62, 30.84261),
        (QpClass::Lasso, 20, 12, 721, 103, 0.0138548),
        (QpClass::Lasso, 30, 13, 139, 58, 1.1010665),
    ] {
        let qp = class.generate(n, &mut StdRng::seed_from_u64(seed))?;
        let base = AdmmSettings {
            check_every: 1,
            max_iters: 20_000,
            ..AdmmSettings::default()
        };
        let at_fixed = Admm::new(AdmmSettings {
            adaptive_rho: false,
            ..base
        })?
        .solve(&qp, None)?;
        let adapted = Admm::new(base)?.solve(&qp, None)?;
        let name = class.name();
        for (label, s, expected) in [
            ("fixed", &at_fixed, fixed),
            ("adaptive", &adapted, adaptive),
        ] {
            assert_eq!(s.status, QpStatus::Solved, "{name} n = {n}, {label}");
            assert!(
                s.iters.abs_diff(expected) <= 2,
                "{name} n = {n}, {label} ρ: {} iterations, OSQP C {expected}",
                s.iters
            );
        }
        let rel = (adapted.objective - objective).abs() / objective;
        assert!(
            rel < 1e-5,
            "{name} n = {n}: objective {} against OSQP C {objective}",
            adapted.objective
        );
    }
    Ok(())
}

/// All ways of solving the KKT system (sparse quasi-definite LDLᵀ, simplicial or supernodal,
/// and dense reduced Cholesky) give the same iterates on every class, with and without ρ
/// changes; `auto` picks the reduced form for a dense P, the sparse one for a structured
/// class, and a supernodal factor for MPC's dense dynamics blocks.
#[test]
fn kkt_forms_agree_and_auto_picks_by_density_of_p() -> Result<()> {
    use amortize::solver::qp::{AdmmWorkspace, KktForm, MpcFamily, QpClass};
    let mut rng = StdRng::seed_from_u64(5);
    for class in QpClass::ALL {
        let qp = class.generate(12, &mut rng)?;
        let settings = |kkt| AdmmSettings {
            kkt,
            check_every: 1,
            ..AdmmSettings::default()
        };
        let reduced = Admm::new(settings(KktForm::Reduced))?.solve(&qp, None)?;
        assert_eq!(reduced.status, QpStatus::Solved, "{}", class.name());
        for form in [
            KktForm::Sparse,
            KktForm::SparseSimplicial,
            KktForm::SparseSupernodal,
        ] {
            let sparse = Admm::new(settings(form))?.solve(&qp, None)?;
            assert_eq!(sparse.status, QpStatus::Solved, "{} {form:?}", class.name());
            assert_eq!(sparse.iters, reduced.iters, "{} {form:?}", class.name());
            assert_eq!(
                sparse.rho_updates,
                reduced.rho_updates,
                "{} {form:?}",
                class.name()
            );
            let dy = sparse
                .y
                .iter()
                .zip(&reduced.y)
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                dy < 1e-8,
                "{} {form:?}: ‖y_sparse − y_reduced‖∞ = {dy}",
                class.name()
            );
            // A per-constraint ρ through the workspace hook refactors both forms alike.
            let mut ws = AdmmWorkspace::new(&qp, settings(form))?;
            let mut wr = AdmmWorkspace::new(&qp, settings(KktForm::Reduced))?;
            assert!(ws.kkt_is_sparse() && !wr.kkt_is_sparse());
            assert_eq!(
                ws.kkt_is_supernodal(),
                form == KktForm::SparseSupernodal,
                "{} {form:?}",
                class.name()
            );
            let rho: Vec<f64> = (0..qp.m()).map(|i| 0.01 * (1 + i % 7) as f64).collect();
            ws.set_rho_vector(&rho)?;
            wr.set_rho_vector(&rho)?;
            for _ in 0..20 {
                ws.step();
                wr.step();
            }
            let (ps, ds) = ws.current_residuals();
            let (pr, dr) = wr.current_residuals();
            assert!(
                (ps - pr).abs() <= 1e-9 * (1.0 + pr) && (ds - dr).abs() <= 1e-9 * (1.0 + dr),
                "{} {form:?}: residuals ({ps}, {ds}) vs ({pr}, {dr})",
                class.name()
            );
        }
    }
    let auto = AdmmSettings::default();
    let random = QpClass::Random.generate(20, &mut rng)?;
    assert!(!AdmmWorkspace::new(&random, auto)?.kkt_is_sparse());
    let huber = QpClass::Huber.generate(20, &mut rng)?;
    let w = AdmmWorkspace::new(&huber, auto)?;
    assert!(w.kkt_is_sparse() && !w.kkt_is_supernodal());
    // The sparse factor is supernodal where dense blocks fill it (MPC with 50 states: the
    // dynamics blocks are dense 50×50), simplicial where little fill happens (Lasso).
    let mpc = MpcFamily::random(50, &mut rng)?;
    let control = mpc.instance(&mpc.sample_initial_state(&mut rng))?;
    assert!(AdmmWorkspace::new(&control, auto)?.kkt_is_supernodal());
    let lasso = QpClass::Lasso.generate(50, &mut rng)?;
    assert!(!AdmmWorkspace::new(&lasso, auto)?.kkt_is_supernodal());
    Ok(())
}

/// `KktOrdering::Auto` skips AMD only where the ascending-degree ordering's factor is within
/// 20% of K's triangle (no ordering stores less): on portfolio QPs, whose hub rows make AMD
/// slow, it does, with a factor as small as AMD's; on lasso and control QPs it keeps AMD's
/// ordering. Either way the solve is the same: same status and iterations, y within 1e-8.
#[test]
fn kkt_ordering_skips_amd_only_when_certified_and_solves_alike() -> Result<()> {
    use amortize::solver::qp::{KktOrdering, QpClass};
    let mut rng = StdRng::seed_from_u64(31);
    for class in QpClass::ALL {
        for n in [10, 40] {
            let qp = class.generate(n, &mut rng)?;
            let settings = |ordering| AdmmSettings {
                ordering,
                check_every: 1,
                ..AdmmSettings::default()
            };
            let amd = Admm::new(settings(KktOrdering::Amd))?.solve(&qp, None)?;
            let auto = Admm::new(settings(KktOrdering::Auto))?.solve(&qp, None)?;
            let name = format!("{} n = {n}", class.name());
            assert_eq!(auto.status, amd.status, "{name}");
            assert_eq!(auto.status, QpStatus::Solved, "{name}");
            assert_eq!(auto.iters, amd.iters, "{name}");
            let dy = auto
                .y
                .iter()
                .zip(&amd.y)
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(dy < 1e-8, "{name}: ‖y_auto − y_amd‖∞ = {dy}");
            let w_amd = AdmmWorkspace::new(&qp, settings(KktOrdering::Amd))?;
            let w_auto = AdmmWorkspace::new(&qp, settings(KktOrdering::Auto))?;
            let Some((false, amd_entries)) = w_amd.kkt_ordering() else {
                // The reduced form (random and equality QPs) has no ordering.
                assert!(w_auto.kkt_ordering().is_none(), "{name}");
                continue;
            };
            let (by_degree, auto_entries) = w_auto.kkt_ordering().unwrap();
            if by_degree {
                // The certificate: within 20% of K's triangle, so of any ordering's factor.
                assert!(
                    auto_entries as f64 <= 1.2 * amd_entries as f64,
                    "{name}: {auto_entries} entries against AMD's {amd_entries}"
                );
            } else {
                assert_eq!(auto_entries, amd_entries, "{name}");
            }
            match class {
                QpClass::Portfolio => assert!(by_degree, "{name}: AMD was not skipped"),
                // Their factors fill (random data rows, dense dynamics blocks) past small n.
                QpClass::Lasso | QpClass::Control if n == 40 => {
                    assert!(!by_degree, "{name}: a filling ordering was certified")
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// A policy that sets wild step sizes never makes ADMM report "solved" above tolerance: every
/// solved answer passes an independent residual check, and an unsolved one is not "solved".
#[test]
fn rho_policy_never_reports_solved_above_tolerance() -> Result<()> {
    use amortize::solver::qp::{QpClass, RhoPolicy, RHO_FEATURES};
    struct Wild;
    impl RhoPolicy for Wild {
        fn adjust(&self, features: &[f64], m: usize) -> Vec<f64> {
            (0..m)
                .map(|i| {
                    if (features[i * RHO_FEATURES + 1] * 1e3).sin() > 0.0 {
                        3.0
                    } else {
                        -3.0
                    }
                })
                .collect()
        }
    }
    let mut rng = StdRng::seed_from_u64(5);
    let mut solved = 0;
    for class in QpClass::ALL {
        for k in 0..4usize {
            // Half the solves also let the policy set ρ before the first iteration.
            let admm = Admm::new(AdmmSettings {
                check_every: 1,
                adaptive_rho_interval: 3,
                max_iters: 300,
                policy_at_start: !k.is_multiple_of(2),
                ..AdmmSettings::default()
            })?;
            let qp = class.generate(8, &mut rng)?;
            let s = admm.solve_with_policy(&qp, None, Some(&Wild))?;
            if s.status != QpStatus::Solved {
                assert!(
                    s.primal_residual.is_nan() || s.iters == 300 || s.status != QpStatus::Solved
                );
                continue;
            }
            solved += 1;
            let mut ay = vec![0.0; qp.m()];
            qp.a().mul_vec(&s.y, &mut ay);
            let (mut py, mut atl) = (vec![0.0; qp.n()], vec![0.0; qp.n()]);
            qp.p().mul_vec(&s.y, &mut py);
            qp.a().mul_transpose_vec(&s.lambda, &mut atl);
            let inf = |v: &[f64]| v.iter().fold(0.0f64, |a, x| a.max(x.abs()));
            let eps_p = 1e-3 + 1e-3 * inf(&ay);
            let eps_d = 1e-3 + 1e-3 * inf(&py).max(inf(&atl)).max(inf(qp.q()));
            assert!(
                qp.primal_residual(&s.y) <= eps_p,
                "{}: primal",
                class.name()
            );
            assert!(
                qp.dual_residual(&s.y, &s.lambda) <= eps_d,
                "{}: dual",
                class.name()
            );
            assert!(s.rho_updates > 0, "the policy was consulted");
        }
    }
    assert!(solved > 0);
    Ok(())
}

/// ES training lowers the iterations of a learned ρ below OSQP's rule on held-out random QPs,
/// and the policy survives a save/load round trip; a corrupt or missing file is refused.
#[test]
fn rlqp_training_beats_osqp_rule_and_policy_checkpoints_round_trip() -> Result<()> {
    use amortize::model::RhoPolicyNet;
    use amortize::solver::qp::{QpClass, RHO_FEATURES};
    use amortize::train::{
        load_policy, load_policy_with_schedule, qp_iterations, save_policy, train_rho_policy,
        RlqpConfig,
    };
    let cfg = RlqpConfig {
        classes: vec![QpClass::Random],
        sizes: vec![10],
        steps: 25,
        batch: 8,
        samples: 4,
        sigma: 0.3,
        learning_rate: 0.1,
        interval: 5,
        ..RlqpConfig::default()
    };
    let policy = RhoPolicyNet::new(
        cfg.policy.clone(),
        &mut StdRng::seed_from_u64(0),
        &candle_core::Device::Cpu,
    )?;
    let features = vec![0.3; 4 * RHO_FEATURES];
    assert_eq!(
        policy.forward_rows(&features, 4)?,
        vec![0.0; 4],
        "untrained = OSQP's rule"
    );
    train_rho_policy(&policy, &cfg, |_| {})?;
    let held_out = cfg.sample(12, &mut StdRng::seed_from_u64(99))?;
    let base: f64 = qp_iterations(&held_out, cfg.baseline_settings(), None, 2)?
        .iter()
        .sum();
    let learned: f64 = qp_iterations(&held_out, cfg.policy_settings(), Some(&policy), 2)?
        .iter()
        .sum();
    assert!(
        learned < 0.8 * base,
        "learned {learned} vs OSQP's rule {base} iterations"
    );

    let scratch = amortize::testing::ScratchDir::new("test-policy").unwrap();
    let dir = scratch.join("policy");
    save_policy(&dir, &policy, cfg.schedule())?;
    let (loaded, schedule) = load_policy_with_schedule(&dir)?;
    assert_eq!(schedule, Some(cfg.schedule()));
    assert_eq!(
        schedule.map(|s| s.apply(cfg.baseline_settings())),
        Some(cfg.policy_settings())
    );
    let features: Vec<f64> = (0..5 * RHO_FEATURES)
        .map(|i| (i as f64 * 0.37).sin())
        .collect();
    assert_eq!(
        policy.forward_rows(&features, 5)?,
        loaded.forward_rows(&features, 5)?
    );
    // A sidecar written before the schedule was saved still loads, without one.
    let meta = std::fs::read_to_string(dir.join("policy.json")).unwrap();
    let mut old: serde_json::Value = serde_json::from_str(&meta).unwrap();
    old.as_object_mut().unwrap().remove("schedule");
    std::fs::write(dir.join("policy.json"), old.to_string()).unwrap();
    assert_eq!(load_policy_with_schedule(&dir)?.1, None);
    std::fs::write(dir.join("policy.safetensors"), b"not a tensor file").unwrap();
    let e = load_policy(&dir).err().expect("corrupt weights");
    assert!(e.to_string().contains("corrupt"), "{e}");
    std::fs::remove_file(dir.join("policy.json")).unwrap();
    let e = load_policy(&dir).err().expect("missing policy.json");
    assert!(e.to_string().contains("policy.json"), "{e}");
    assert!(RlqpConfig {
        sizes: vec![],
        ..RlqpConfig::default()
    }
    .validate()
    .is_err());
    Ok(())
}

/// The policy's forward pass against hand-computed values (to f32 precision), for both hidden
/// activations.
#[test]
fn rho_policy_forward_matches_hand_computation_for_both_activations() -> Result<()> {
    use amortize::model::{PolicyActivation, RhoPolicyConfig, RhoPolicyNet};
    use amortize::solver::qp::RHO_FEATURES;
    use candle_core::{Device, Tensor};
    use std::collections::HashMap;
    for (activation, act) in [
        (PolicyActivation::Tanh, f64::tanh as fn(f64) -> f64),
        (PolicyActivation::Softsign, |x: f64| x / (1.0 + x.abs())),
    ] {
        let config = RhoPolicyConfig {
            hidden: vec![2],
            activation,
        };
        let net = RhoPolicyNet::new(config, &mut StdRng::seed_from_u64(0), &Device::Cpu)?;
        // Hidden unit 0 reads feature 0, unit 1 reads 2 × feature 1.
        let mut w0 = vec![0.0f64; RHO_FEATURES * 2];
        w0[0] = 1.0;
        w0[3] = 2.0;
        let map = HashMap::from([
            (
                "layer0.weight".to_string(),
                Tensor::from_vec(w0, (RHO_FEATURES, 2), &Device::Cpu)?,
            ),
            (
                "layer0.bias".to_string(),
                Tensor::new(&[0.1f64, -0.2], &Device::Cpu)?,
            ),
            (
                "layer1.weight".to_string(),
                Tensor::from_vec(vec![1.5f64, -0.5], (2, 1), &Device::Cpu)?,
            ),
            (
                "layer1.bias".to_string(),
                Tensor::new(&[0.05f64], &Device::Cpu)?,
            ),
        ]);
        net.params().load_map(&map)?;
        let mut features = vec![0.7; RHO_FEATURES];
        features[0] = 0.4;
        features[1] = -0.3;
        let out = net.forward_rows(&features, 1)?[0];
        let expected = 1.5 * act(0.5) - 0.5 * act(-0.8) + 0.05;
        // The forward pass runs in f32.
        assert!(
            (out - expected).abs() < 1e-6,
            "{activation:?}: {out} vs {expected}"
        );
    }
    Ok(())
}

/// Consulting the policy before the first iteration sets ρ from the starting point: a policy
/// that answers Δ = 1 for inequality rows and 0 for equality rows (read from the equality
/// feature) multiplies the former's ρ by 10 and leaves the latter's at 10³ρ.
#[test]
fn rho_policy_consulted_at_start_sets_rho_before_the_first_iteration() -> Result<()> {
    use amortize::solver::qp::{QpClass, RhoPolicy, RHO_FEATURES};
    struct InequalitiesUp;
    impl RhoPolicy for InequalitiesUp {
        fn adjust(&self, features: &[f64], m: usize) -> Vec<f64> {
            (0..m)
                .map(|i| 1.0 - features[i * RHO_FEATURES + 6])
                .collect()
        }
    }
    let qp = QpClass::Lasso.generate(6, &mut StdRng::seed_from_u64(2))?;
    let settings = AdmmSettings::default();
    let mut w = AdmmWorkspace::new(&qp, settings)?;
    let before = w.rho_vector().to_vec();
    w.consult_at_start(&InequalitiesUp)?;
    let after = w.rho_vector();
    let equalities = (0..qp.m())
        .filter(|&i| qp.u()[i] - qp.l()[i] < 1e-4)
        .count();
    assert!(equalities > 0 && equalities < qp.m());
    for i in 0..qp.m() {
        let expected = if qp.u()[i] - qp.l()[i] < 1e-4 {
            before[i]
        } else {
            10.0 * before[i]
        };
        assert!(
            (after[i] - expected).abs() <= 1e-12 * expected,
            "row {i}: ρ {} → {}, expected {expected}",
            before[i],
            after[i]
        );
    }
    // Through the solver: the start consultation counts as a ρ update (the first iteration
    // runs with the new ρ), and termination stays OSQP's.
    let at_start = Admm::new(AdmmSettings {
        policy_at_start: true,
        max_iters: 1,
        ..settings
    })?
    .solve_with_policy(&qp, None, Some(&InequalitiesUp))?;
    assert_eq!(at_start.rho_updates, 1);
    let solved = Admm::new(AdmmSettings {
        policy_at_start: true,
        ..settings
    })?
    .solve_with_policy(&qp, None, Some(&InequalitiesUp))?;
    assert_eq!(solved.status, QpStatus::Solved);
    Ok(())
}

/// Factorisations are counted (the first one included, none wasted when the policy sets ρ
/// before the first iteration), and `policy_max_changes` stops the policy after that many
/// changes of ρ.
#[test]
fn factorisations_are_counted_and_policy_changes_can_be_capped() -> Result<()> {
    use amortize::solver::qp::{QpClass, RhoPolicy};
    use amortize::train::{solve_costs, RlqpConfig};
    /// Alternates ρ between 10× and 0.1× OSQP's choice at every consultation.
    struct Flip(std::sync::atomic::AtomicUsize);
    impl RhoPolicy for Flip {
        fn adjust(&self, _features: &[f64], m: usize) -> Vec<f64> {
            let k = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            vec![if k.is_multiple_of(2) { 1.0 } else { -1.0 }; m]
        }
    }
    let qp = QpClass::Lasso.generate(10, &mut StdRng::seed_from_u64(4))?;
    let base = AdmmSettings {
        check_every: 1,
        adaptive_rho_interval: 2,
        policy_backoff: false,
        max_iters: 400,
        ..AdmmSettings::default()
    };
    let osqp = Admm::new(base)?.solve(&qp, None)?;
    assert_eq!(osqp.factorisations, 1 + osqp.rho_updates);
    let flip = |settings: AdmmSettings| {
        Admm::new(settings)?.solve_with_policy(&qp, None, Some(&Flip(0.into())))
    };
    let free = flip(AdmmSettings {
        policy_at_start: true,
        ..base
    })?;
    assert!(free.rho_updates > 3, "{} changes", free.rho_updates);
    // The start consultation changed ρ, so the factorisation for OSQP's first ρ was skipped.
    assert_eq!(free.factorisations, free.rho_updates);
    let capped = flip(AdmmSettings {
        policy_at_start: true,
        policy_max_changes: Some(2),
        ..base
    })?;
    assert_eq!(capped.rho_updates, 2);
    assert_eq!(capped.factorisations, 2);
    // The training loss's cost: iterations + κ·factorisations.
    let costs = solve_costs(std::slice::from_ref(&qp), base, None, 1, 10.0)?;
    assert_eq!(costs[0], (osqp.iters + 10 * osqp.factorisations) as f64);
    assert!(RlqpConfig {
        refactor_cost: -1.0,
        ..RlqpConfig::default()
    }
    .validate()
    .is_err());
    Ok(())
}

/// The MPC family: the solution of an instance satisfies the dynamics and bounds, its first
/// state is x₀, and bad initial states are refused with clear errors.
#[test]
fn mpc_instances_follow_the_dynamics_and_refuse_bad_initial_states() -> Result<()> {
    use amortize::solver::qp::{MpcFamily, MPC_HORIZON};
    let mut rng = StdRng::seed_from_u64(8);
    let family = MpcFamily::random(4, &mut rng)?;
    assert_eq!(family.states(), 4);
    assert_eq!(family.variables(), (MPC_HORIZON + 1) * 4 + MPC_HORIZON * 2);
    let x0 = family.sample_initial_state(&mut rng);
    let qp = family.instance(&x0)?;
    assert_eq!((qp.n(), qp.m()), (family.variables(), family.constraints()));
    let tight = Admm::new(AdmmSettings {
        max_iters: 100_000,
        ..AdmmSettings::accurate(1e-9)
    })?;
    let s = tight.solve(&qp, None)?;
    assert_eq!(s.status, QpStatus::Solved);
    for (i, v) in x0.iter().enumerate() {
        assert!((s.y[i] - v).abs() < 1e-6, "x_0[{i}] = {} vs {v}", s.y[i]);
    }
    // Every constraint row within its bounds (dynamics rows are equalities).
    let mut ay = vec![0.0; qp.m()];
    qp.a().mul_vec(&s.y, &mut ay);
    for i in 0..qp.m() {
        assert!(
            ay[i] >= qp.l()[i] - 1e-6 && ay[i] <= qp.u()[i] + 1e-6,
            "row {i}: {} not in [{}, {}]",
            ay[i],
            qp.l()[i],
            qp.u()[i]
        );
    }
    let (_, obj_ref) = clarabel_solve(&qp);
    assert!((s.objective - obj_ref).abs() <= 1e-6 * obj_ref.abs().max(1.0));
    let e = family.instance(&[0.0; 3]).unwrap_err().to_string();
    assert!(e.contains("3 entries") && e.contains("4 states"), "{e}");
    let e = family
        .instance(&[0.0, f64::NAN, 0.0, 0.0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("NaN"), "{e}");
    assert!(MpcFamily::random(1, &mut rng).is_err());
    Ok(())
}

/// The warm-start model: trained briefly on a family's varying data (x₀ of an MPC system, the
/// observations b of a lasso fit) it already cuts ADMM's iterations on held-out members, its
/// checkpoint round-trips, and bad inputs or checkpoints are refused.
#[test]
fn qp_warm_start_cuts_iterations_and_its_checkpoint_round_trips() -> Result<()> {
    use amortize::solver::qp::QpClass;
    use amortize::train::{QpWarmStart, QpWarmStartConfig};
    let admm = Admm::new(AdmmSettings {
        check_every: 1,
        ..AdmmSettings::default()
    })?;
    let scratch = amortize::testing::ScratchDir::new("test-warm").unwrap();
    let dir = scratch.join("model");
    for (class, size, inputs) in [(QpClass::Control, 4, 8), (QpClass::Lasso, 6, 12)] {
        let cfg = QpWarmStartConfig {
            class,
            size,
            train_instances: 500,
            steps: 1500,
            hidden: vec![128, 128],
            held_out: 30,
            ..QpWarmStartConfig::default()
        };
        let (model, records) = QpWarmStart::train(&cfg, |_| {})?;
        assert!(records.last().unwrap().loss < records[0].loss);
        // Control reads x₀ twice (the l and u of its initial-state rows), lasso b twice.
        assert_eq!(model.input_count(), inputs, "{}", class.name());
        let family = cfg.family()?;
        let qps = cfg.held_out_instances(&family)?;
        let predictions = model.predict(&qps)?;
        let (mut cold, mut warm) = (0, 0);
        for (qp, (y, lambda)) in qps.iter().zip(&predictions) {
            assert_eq!((y.len(), lambda.len()), (qp.n(), qp.m()));
            cold += admm.solve(qp, None)?.iters;
            let s = admm.solve(qp, Some((y, lambda)))?;
            assert_eq!(s.status, QpStatus::Solved);
            warm += s.iters;
        }
        assert!(
            (warm as f64) < 0.9 * cold as f64,
            "{}: warm {warm} vs cold {cold} iterations",
            class.name()
        );
        let _ = std::fs::remove_dir_all(&dir);
        model.save(&dir)?;
        let loaded = QpWarmStart::load(&dir)?;
        assert_eq!(loaded.predict(&qps[..3])?, model.predict(&qps[..3])?);
    }
    // The lasso model in `dir` refuses QPs of another size and data it cannot read.
    let loaded = QpWarmStart::load(&dir)?;
    let mut rng = StdRng::seed_from_u64(4);
    let other = QpClass::Lasso.generate(7, &mut rng)?;
    let e = loaded.predict(&[other]).unwrap_err().to_string();
    assert!(e.contains("variables"), "{e}");
    let member = loaded.config().family()?.base().clone();
    let mut l = member.l().to_vec();
    l[0] = f64::NEG_INFINITY;
    let unbounded = member.with_vectors(member.q().to_vec(), l, member.u().to_vec())?;
    let e = loaded.predict(&[unbounded]).unwrap_err().to_string();
    assert!(e.contains("infinite"), "{e}");
    // A checkpoint of the first format (MPC only, no input positions) is refused by name.
    let json = std::fs::read_to_string(dir.join("warm-start.json")).unwrap();
    let mut v1: serde_json::Value = serde_json::from_str(&json).unwrap();
    v1["format"] = "amortize-qp-warm-start-1".into();
    v1.as_object_mut().unwrap().remove("inputs");
    std::fs::write(dir.join("warm-start.json"), v1.to_string()).unwrap();
    let e = QpWarmStart::load(&dir).err().expect("format 1");
    assert!(e.to_string().contains("format"), "{e}");
    // A checkpoint of another family size does not fit.
    std::fs::write(dir.join("warm-start.json"), &json).unwrap();
    std::fs::write(
        dir.join("warm-start.json"),
        json.replace("\"size\": 6", "\"size\": 7"),
    )
    .unwrap();
    let e = QpWarmStart::load(&dir).err().expect("mismatched family");
    assert!(e.to_string().contains("entries"), "{e}");
    std::fs::write(dir.join("warm-start.safetensors"), b"garbage").unwrap();
    let e = QpWarmStart::load(&dir).err().expect("corrupt weights");
    assert!(e.to_string().contains("corrupt"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    for bad in [
        QpWarmStartConfig {
            steps: 0,
            ..QpWarmStartConfig::default()
        },
        QpWarmStartConfig {
            size: 1,
            ..QpWarmStartConfig::default()
        },
    ] {
        assert!(bad.validate().is_err());
    }
    // Files written when the size was called `states` still read.
    let old: QpWarmStartConfig = serde_json::from_str(r#"{"states": 4}"#).unwrap();
    assert_eq!((old.class, old.size), (QpClass::Control, 4));
    Ok(())
}
