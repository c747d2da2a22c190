use amortize::eval::{Baseline, BaselineMethod, Quantiles};
use amortize::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

#[test]
fn gap_of_the_exact_solution_is_zero_and_of_a_shifted_one_is_positive() -> Result<()> {
    let p = Quadratic::new(QuadraticConfig::default())?;
    let x = p
        .sample_contexts(50, &mut StdRng::seed_from_u64(0), &Device::Cpu)?
        .to_dtype(DType::F64)?;
    let y = p.solve_exact(&x)?.unwrap();
    let g = amortization_gap(&p, &x, &y, &y, 1e-6)?;
    assert!(g.mean_gap.abs() < 1e-12);
    assert_eq!(g.fraction_within_tolerance, 1.0);
    assert!(g.mean_residual < 1e-9);
    let shifted = (&y + 0.2)?;
    let g = amortization_gap(&p, &x, &shifted, &y, 1e-6)?;
    assert!(g.mean_gap > 0.0 && g.gap_quantiles.p50 > 0.0);
    assert_eq!(g.fraction_within_tolerance, 0.0);
    assert!((g.mean_objective - g.mean_optimum - g.mean_gap).abs() < 1e-12);
    Ok(())
}

#[test]
fn quantiles_use_nearest_rank() {
    let v: Vec<f64> = (1..=100).map(|i| i as f64).collect();
    let q = Quantiles::of(&v);
    assert_eq!((q.p50, q.p90, q.p99, q.max), (50.0, 90.0, 99.0, 100.0));
}

/// With the exact solver as the "model", Adam must need iterations to match it, and the curve
/// must decrease; a model that predicts a bad constant is matched at once.
#[test]
fn speed_at_equal_quality_counts_iterations_to_the_amortized_level() -> Result<()> {
    let p = Quadratic::new(QuadraticConfig::default())?;
    let x = p.sample_contexts(64, &mut StdRng::seed_from_u64(0), &Device::Cpu)?;
    let exact_plus = |x: &Tensor| -> Result<Tensor> { Ok((p.solve_exact(x)?.unwrap() + 0.05)?) };
    let cfg = SpeedConfig {
        baselines: vec![
            Baseline {
                method: BaselineMethod::Adam { lr: 0.05 },
                starts: 1,
            },
            Baseline {
                method: BaselineMethod::Gd { lr: 0.1 },
                starts: 2,
            },
        ],
        max_iters: 400,
        prediction_repeats: 3,
        seed: 0,
    };
    let r = speed_at_equal_quality(&p, &x, &exact_plus, &cfg)?;
    assert_eq!(r.baselines.len(), 2);
    for b in &r.baselines {
        let it = b.iters_to_match.expect("matched within the budget");
        assert!(it > 5, "{}: matched after {it}", b.name);
        assert!(!b.ratio_is_lower_bound && b.speed_ratio > 0.0);
        let c = &b.curve.mean_objective;
        assert!(c[it] <= r.amortized_mean_objective && c[it - 1] > r.amortized_mean_objective);
        assert!(c.last().unwrap() < &c[0]);
    }
    let bad = |x: &Tensor| -> Result<Tensor> { Ok((x.narrow(1, 0, 3)?.zeros_like()? + 50.0)?) };
    let r = speed_at_equal_quality(
        &p,
        &x,
        &bad,
        &SpeedConfig {
            max_iters: 3,
            prediction_repeats: 1,
            ..cfg
        },
    )?;
    assert_eq!(r.baselines[0].iters_to_match, Some(0));
    Ok(())
}
