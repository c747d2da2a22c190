use amortize::solver::qp::{
    Admm, AdmmSettings, AdmmWorkspace, QpClass, QpSolution, QpStatus, RhoPolicy, RHO_FEATURES,
};
use amortize::Result;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::qp::{clarabel_solve, primal_infeasible_qp};

/// Every class's family keeps the base QP's P and A, changes its parameter (q, l or u) from
/// one instance to the next, and its instances are QPs that ADMM solves to Clarabel's
/// objective.
#[test]
fn qp_families_share_matrices_and_vary_their_parameter() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(3);
    let tight = Admm::new(AdmmSettings {
        max_iters: 50_000,
        ..AdmmSettings::accurate(1e-8)
    })?;
    for class in QpClass::ALL {
        let family = class.family(6, &mut rng)?;
        assert_eq!(family.class(), class);
        let (a, b) = (family.instance(&mut rng)?, family.instance(&mut rng)?);
        for qp in [&a, &b] {
            assert_eq!(qp.p(), family.base().p(), "{}", class.name());
            assert_eq!(qp.a(), family.base().a(), "{}", class.name());
            let s = tight.solve(qp, None)?;
            assert_eq!(s.status, QpStatus::Solved, "{}", class.name());
            let (_, reference) = clarabel_solve(qp);
            let rel = (s.objective - reference).abs() / reference.abs().max(1.0);
            assert!(
                rel < 1e-5,
                "{}: relative objective error {rel}",
                class.name()
            );
        }
        assert!(
            a.q() != b.q() || a.l() != b.l() || a.u() != b.u(),
            "{}: two instances are the same QP",
            class.name()
        );
    }
    assert!(QpClass::Lasso.family(1, &mut rng).is_err());
    Ok(())
}

/// Raises the ρ of every inequality row tenfold, from the equality feature alone: the same ρ
/// for every QP of a family.
struct InequalitiesUp;

impl RhoPolicy for InequalitiesUp {
    fn adjust(&self, features: &[f64], m: usize) -> Vec<f64> {
        (0..m)
            .map(|i| 1.0 - features[i * RHO_FEATURES + 6])
            .collect()
    }
}

/// OSQP's update mode: a family solved in sequence gives the answers of fresh solves, the first
/// one exactly, with fewer factorisations (one analysis, ρ carried over); with a policy
/// consulted at the start that proposes the factor's ρ again, only the first QP factors and,
/// with the same scaling, every QP takes the iterations of its fresh solve.
#[test]
fn solve_sequence_reuses_the_factor_and_matches_fresh_solves() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(5);
    for class in [QpClass::Lasso, QpClass::Control, QpClass::Random] {
        let family = class.family(6, &mut rng)?;
        let qps: Vec<_> = (0..6)
            .map(|_| family.instance(&mut rng))
            .collect::<Result<_>>()?;
        let settings = AdmmSettings {
            check_every: 1,
            ..AdmmSettings::default()
        };
        let admm = Admm::new(settings)?;
        let fresh: Vec<_> = qps
            .iter()
            .map(|qp| admm.solve(qp, None))
            .collect::<Result<_>>()?;
        let sequence = admm.solve_sequence(&qps, None)?;
        assert_eq!(sequence.len(), qps.len());
        // The ρ-independent set-up is a part of each solve's time, never all of it.
        for s in fresh.iter().chain(&sequence) {
            assert!(
                s.setup_elapsed > 0.0 && s.setup_elapsed < s.elapsed,
                "{}: set-up {} s of {} s",
                class.name(),
                s.setup_elapsed,
                s.elapsed
            );
        }
        assert_eq!(sequence[0].iters, fresh[0].iters, "{}", class.name());
        assert_eq!(sequence[0].y, fresh[0].y, "{}", class.name());
        for (qp, (s, f)) in qps.iter().zip(sequence.iter().zip(&fresh)) {
            assert_eq!(s.status, QpStatus::Solved, "{}", class.name());
            assert!(s.primal_residual.is_finite() && s.dual_residual.is_finite());
            // Both meet eps 1e-3: their objectives agree to about that.
            let gap = (s.objective - f.objective).abs() / f.objective.abs().max(1.0);
            assert!(gap < 1e-2, "{}: objective gap {gap}", class.name());
            assert!(qp.primal_residual(&s.y) < 1e-2, "{}", class.name());
        }
        let count = |v: &[QpSolution]| v.iter().map(|s| s.factorisations).sum::<usize>();
        assert!(
            count(&sequence) < count(&fresh),
            "{}: {} factorisations in sequence, {} fresh",
            class.name(),
            count(&sequence),
            count(&fresh)
        );

        let with_policy = Admm::new(AdmmSettings {
            policy_at_start: true,
            adaptive_rho: false,
            ..settings
        })?;
        let fresh: Vec<_> = qps
            .iter()
            .map(|qp| with_policy.solve_with_policy(qp, None, Some(&InequalitiesUp)))
            .collect::<Result<_>>()?;
        let sequence = with_policy.solve_sequence(&qps, Some(&InequalitiesUp))?;
        assert_eq!(sequence[0].factorisations, 1);
        for (s, f) in sequence.iter().zip(&fresh) {
            assert_eq!(f.factorisations, 1);
            assert_eq!(s.status, QpStatus::Solved);
            // The same ρ and, where q is fixed in the family (lasso, control), the same
            // scaling as a fresh solve: the same iterations. Random QPs vary q, and a fresh
            // solve's cost scaling follows q (the update keeps the first one's, as OSQP's).
            if class != QpClass::Random {
                assert_eq!(s.iters, f.iters, "{}", class.name());
            }
        }
        assert!(sequence[1..].iter().all(|s| s.factorisations == 0));
    }
    assert!(Admm::default().solve_sequence(&[], None)?.is_empty());
    Ok(())
}

/// Records what the policy is shown (every row's log ρ feature, at every consultation) and
/// answers Δ = 1 on inequality rows at the start and Δ = 2 later: a 10× change, and a
/// refactorisation, at the first scheduled consultation.
struct Recorder(std::sync::Mutex<Vec<f64>>);

impl RhoPolicy for Recorder {
    fn adjust(&self, features: &[f64], _m: usize) -> Vec<f64> {
        let rows = features.chunks(RHO_FEATURES);
        self.0.lock().unwrap().extend(rows.clone().map(|f| f[0]));
        rows.map(|f| {
            let later = f[7] > 0.0;
            (1.0 - f[6]) * if later { 2.0 } else { 1.0 }
        })
        .collect()
    }
}

/// Four QPs of one lasso family, each solved fresh and then all in sequence by a start policy
/// (`Recorder`, consulted before the first iteration and every 2 iterations after, at most
/// `max_changes` changes of ρ): the fresh solutions with what each fresh solve showed the
/// policy, and the sequence's with what it showed the policy in all.
struct FreshAndSequence {
    fresh: Vec<QpSolution>,
    fresh_features: Vec<Vec<f64>>,
    sequence: Vec<QpSolution>,
    sequence_features: Vec<f64>,
}

fn fresh_and_sequence(max_changes: Option<usize>) -> Result<FreshAndSequence> {
    let mut rng = StdRng::seed_from_u64(13);
    let family = QpClass::Lasso.family(6, &mut rng)?;
    let qps: Vec<_> = (0..4)
        .map(|_| family.instance(&mut rng))
        .collect::<Result<_>>()?;
    let admm = Admm::new(AdmmSettings {
        check_every: 1,
        adaptive_rho_interval: 2,
        policy_at_start: true,
        policy_max_changes: max_changes,
        ..AdmmSettings::default()
    })?;
    let (mut fresh, mut fresh_features) = (Vec::new(), Vec::new());
    for qp in &qps {
        let recorder = Recorder(Default::default());
        fresh.push(admm.solve_with_policy(qp, None, Some(&recorder))?);
        fresh_features.push(recorder.0.into_inner().unwrap());
    }
    let recorder = Recorder(Default::default());
    let sequence = admm.solve_sequence(&qps, Some(&recorder))?;
    Ok(FreshAndSequence {
        fresh,
        fresh_features,
        sequence,
        sequence_features: recorder.0.into_inner().unwrap(),
    })
}

/// In sequence, a start policy is shown what a fresh solve shows it (the initial ρ, not the
/// ρ the previous QP ended with) and consulted on the same schedule, so with the same scaling
/// (lasso: q fixed) every QP repeats its fresh solve: the same features, iterations and
/// factorisations.
#[test]
fn a_start_policy_in_sequence_repeats_fresh_solves() -> Result<()> {
    let run = fresh_and_sequence(None)?;
    assert_eq!(run.sequence_features, run.fresh_features.concat());
    for (s, f) in run.sequence.iter().zip(&run.fresh) {
        assert_eq!(s.status, QpStatus::Solved);
        assert_eq!((s.iters, s.factorisations), (f.iters, f.factorisations));
        // The start's ρ and later changes (Δ is relative to OSQP's estimate of the moment).
        assert!(f.factorisations >= 2, "{} factorisations", f.factorisations);
    }
    Ok(())
}

/// A policy that may change ρ once (`policy_max_changes = Some(1)`) is consulted once per QP in
/// sequence too, as in fresh solves: from the second QP on the factor already holds the ρ the
/// start asks for, so nothing is refactored, but the start still spends the change (it once
/// did not, and the policy was consulted again mid-solve, which it was not trained for).
#[test]
fn a_once_only_start_policy_is_consulted_once_per_qp_in_sequence() -> Result<()> {
    let run = fresh_and_sequence(Some(1))?;
    for (features, f) in run.fresh_features.iter().zip(&run.fresh) {
        assert_eq!(
            features.len(),
            f.lambda.len(),
            "one consultation per fresh solve"
        );
    }
    assert_eq!(run.sequence_features, run.fresh_features.concat());
    for (k, (s, f)) in run.sequence.iter().zip(&run.fresh).enumerate() {
        assert_eq!(s.status, QpStatus::Solved);
        assert!(
            s.iters > 2,
            "the solve outlasts the first scheduled consultation"
        );
        assert_eq!(s.iters, f.iters, "QP {k}");
        assert_eq!(f.factorisations, 1);
        assert_eq!(s.factorisations, usize::from(k == 0), "QP {k}");
    }
    // No changes at all is not a cap: it is refused.
    let e = Admm::new(AdmmSettings {
        policy_max_changes: Some(0),
        ..AdmmSettings::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("policy_max_changes"), "{e}");
    Ok(())
}

/// A QP with other matrices is refused by the update, naming the problem, and the workspace
/// still solves its own QP; new vectors of the wrong length, with NaN or with l > u are
/// refused too.
#[test]
fn updates_refuse_other_matrices_and_bad_vectors() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(9);
    let family = QpClass::Lasso.family(5, &mut rng)?;
    let qp = family.instance(&mut rng)?;
    let other = QpClass::Lasso.generate(5, &mut rng)?;
    let admm = Admm::default();
    let err = admm
        .solve_sequence(&[qp.clone(), other.clone()], None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("P or A"), "{err}");

    let mut w = AdmmWorkspace::new(&qp, AdmmSettings::default())?;
    assert!(w.reload(&other).is_err());
    let mut status = None;
    while status.is_none() {
        w.step();
        status = w.check(0.0);
    }
    assert_eq!(status, Some(QpStatus::Solved));

    let (n, m) = (qp.n(), qp.m());
    let msg = |r: Result<amortize::solver::qp::QpProblem>| r.unwrap_err().to_string();
    assert!(
        msg(qp.with_vectors(vec![0.0; n + 1], qp.l().to_vec(), qp.u().to_vec())).contains("length")
    );
    let mut q = qp.q().to_vec();
    q[0] = f64::NAN;
    assert!(msg(qp.with_vectors(q, qp.l().to_vec(), qp.u().to_vec())).contains("NaN"));
    assert!(msg(qp.with_vectors(qp.q().to_vec(), vec![1.0; m], vec![0.0; m])).contains("exceeds"));
    Ok(())
}

/// ADMM checking termination every iteration, restarting each QP of a sequence from zero
/// and from the previous one's iterate (`warm_start_sequence`).
fn cold_and_warm_sequences() -> Result<(Admm, Admm)> {
    let cold = Admm::new(AdmmSettings {
        check_every: 1,
        ..AdmmSettings::default()
    })?;
    let warm = Admm::new(AdmmSettings {
        warm_start_sequence: true,
        ..*cold.settings()
    })?;
    Ok((cold, warm))
}

/// With `warm_start_sequence`, each QP of a sequence starts from the previous one's iterate
/// (OSQP's warm starting in its update mode): a QP repeated after its own solve stops at the
/// first check, where a cold start iterates again; QPs that differ still solve to the
/// tolerance from the other's solution.
#[test]
fn a_warm_sequence_starts_from_the_previous_solution() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(13);
    for class in [QpClass::Control, QpClass::Lasso] {
        let family = class.family(6, &mut rng)?;
        let (a, b) = (family.instance(&mut rng)?, family.instance(&mut rng)?);
        let (cold, warm) = cold_and_warm_sequences()?;
        let repeated = [a.clone(), a.clone()];
        let (c, w) = (
            cold.solve_sequence(&repeated, None)?,
            warm.solve_sequence(&repeated, None)?,
        );
        assert_eq!(
            w[0].iters,
            c[0].iters,
            "{}: the first QP starts cold",
            class.name()
        );
        assert_eq!(w[1].status, QpStatus::Solved, "{}", class.name());
        assert_eq!(w[1].iters, 1, "{}", class.name());
        assert!(
            c[1].iters > 1,
            "{}: cold restart {}",
            class.name(),
            c[1].iters
        );
        let (_, reference) = clarabel_solve(&b);
        let w = warm.solve_sequence(&[a.clone(), b.clone()], None)?;
        assert_eq!(w[1].status, QpStatus::Solved, "{}", class.name());
        let gap = (w[1].objective - reference).abs() / reference.abs().max(1.0);
        assert!(gap < 1e-2, "{}: objective gap {gap}", class.name());
    }
    Ok(())
}

/// A warm sequence keeps only a usable iterate: after an infeasible QP (whose iterate runs
/// off along its certificate) the next QP starts from zero, exactly as in a cold sequence.
#[test]
fn a_warm_sequence_restarts_from_zero_after_an_infeasible_qp() -> Result<()> {
    // y₁ ≥ 1, y₁ + y₂ ≤ −1, y₂ ≥ 0: infeasible; with y₁ + y₂ ≤ 3 instead, feasible.
    let infeasible = primal_infeasible_qp()?;
    let feasible = infeasible.with_vectors(
        vec![0.0, 0.0],
        infeasible.l().to_vec(),
        vec![f64::INFINITY, 3.0, f64::INFINITY],
    )?;
    let (cold, warm) = cold_and_warm_sequences()?;
    let qps = [infeasible, feasible];
    let (c, w) = (
        cold.solve_sequence(&qps, None)?,
        warm.solve_sequence(&qps, None)?,
    );
    assert_eq!(w[0].status, QpStatus::PrimalInfeasible);
    assert_eq!(w[1].status, QpStatus::Solved);
    assert_eq!((w[1].iters, &w[1].y), (c[1].iters, &c[1].y));
    Ok(())
}
