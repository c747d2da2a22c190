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
fn clarabel_solve(qp: &QpProblem) -> (Vec<f64>, f64) {
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
        eps_abs: 1e-9,
        eps_rel: 1e-9,
        max_iters: 50_000,
        ..AdmmSettings::default()
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

/// Infeasible QPs end in the matching status with a valid certificate.
#[test]
fn admm_detects_primal_and_dual_infeasibility() -> Result<()> {
    // y₁ ≥ 1 and y₁ + y₂ ≤ −1 and y₂ ≥ 0: no feasible point.
    let qp = QpProblem::from_dense(
        &[1.0, 0.0, 0.0, 1.0],
        vec![0.0, 0.0],
        &[1.0, 0.0, 1.0, 1.0, 0.0, 1.0],
        vec![1.0, f64::NEG_INFINITY, 0.0],
        vec![f64::INFINITY, -1.0, f64::INFINITY],
    )?;
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
