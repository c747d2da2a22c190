use amortize::prelude::*;
use amortize::testing::{max_abs_diff, problem_zoo};
use rand::rngs::StdRng;
use rand::SeedableRng;

#[test]
fn samplers_are_seeded_and_shaped() -> Result<()> {
    for config in problem_zoo() {
        let p = config.build()?;
        let a = p.sample_contexts(7, &mut StdRng::seed_from_u64(3), &Device::Cpu)?;
        let b = p.sample_contexts(7, &mut StdRng::seed_from_u64(3), &Device::Cpu)?;
        let c = p.sample_contexts(7, &mut StdRng::seed_from_u64(4), &Device::Cpu)?;
        assert_eq!(a.dims(), &[7, p.context_dim()]);
        assert_eq!(
            max_abs_diff(&a, &b)?,
            0.0,
            "{}: same seed, same contexts",
            p.name()
        );
        assert!(
            max_abs_diff(&a, &c)? > 0.0,
            "{}: other seed, other contexts",
            p.name()
        );
        p.check_contexts(&a)?;
    }
    Ok(())
}

#[test]
fn sphere_contexts_follow_the_reference_layout() -> Result<()> {
    let p = Sphere::new(SphereConfig::default())?;
    let x: Vec<Vec<f32>> = p
        .sample_contexts(200, &mut StdRng::seed_from_u64(0), &Device::Cpu)?
        .to_vec2()?;
    for row in &x {
        for i in 0..4 {
            let n: f32 = row[3 * i..3 * i + 3].iter().map(|v| v * v).sum();
            assert!((n - 1.0).abs() < 1e-5, "centres are unit vectors");
            let a = row[12 + i];
            assert!((0.0..=0.7).contains(&a), "alpha in 0.7*U(0,1), got {a}");
        }
    }
    let normal = Sphere::new(SphereConfig {
        alpha: AlphaDistribution::Normal { variance: 4.0 },
        ..Default::default()
    })?;
    let x: Vec<Vec<f32>> = normal
        .sample_contexts(2000, &mut StdRng::seed_from_u64(0), &Device::Cpu)?
        .to_vec2()?;
    let alphas: Vec<f64> = x
        .iter()
        .flat_map(|r| r[12..16].iter().map(|&v| v as f64))
        .collect();
    let var = alphas.iter().map(|a| a * a).sum::<f64>() / alphas.len() as f64;
    assert!(
        (var - 4.0).abs() < 0.4,
        "alpha variance {var} should be near 4"
    );
    Ok(())
}
use amortize::problem::AlphaDistribution;

/// The exact solver must beat (or tie) a brute-force search over a much finer grid, and its
/// answers must be stationary on the sphere.
#[test]
fn sphere_exact_solver_is_globally_optimal() -> Result<()> {
    for gamma in [0.5, 0.0] {
        let p = Sphere::new(SphereConfig {
            gamma,
            ..Default::default()
        })?;
        let x = p
            .sample_contexts(20, &mut StdRng::seed_from_u64(1), &Device::Cpu)?
            .to_dtype(DType::F64)?;
        let y = p.solve_exact(&x)?.unwrap();
        let f: Vec<f64> = p.objective(&y, &x)?.to_vec1()?;
        let fine = amortize::problem::fibonacci_sphere(60_000);
        let rows: Vec<Vec<f64>> = x.to_vec2()?;
        for (i, row) in rows.iter().enumerate() {
            let brute = fine
                .iter()
                .map(|q| p.point_value_and_grad(*q, row).0)
                .fold(f64::INFINITY, f64::min);
            assert!(
                f[i] <= brute + 1e-9,
                "gamma {gamma}, instance {i}: {} > brute {brute}",
                f[i]
            );
        }
        if gamma > 0.0 {
            let r: Vec<f64> = p.residual(&y, &x)?.to_vec1()?;
            assert!(r.iter().all(|v| *v < 1e-6), "residuals {r:?}");
        }
    }
    Ok(())
}

#[test]
fn quadratic_and_toy1d_solutions_are_stationary() -> Result<()> {
    for config in [
        ProblemConfig::Quadratic(QuadraticConfig::default()),
        ProblemConfig::Toy1d(Toy1dConfig::default()),
    ] {
        let p = config.build()?;
        let x = p
            .sample_contexts(16, &mut StdRng::seed_from_u64(2), &Device::Cpu)?
            .to_dtype(DType::F64)?;
        let y = p.solve_exact(&x)?.unwrap();
        let g = p.gradient(&y, &x)?;
        let e = g.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
        assert!(e < 1e-10, "{}: gradient at y* is {e}", p.name());
        // A perturbed point is worse.
        let f0 = p.objective(&y, &x)?.sum_all()?.to_scalar::<f64>()?;
        let f1 = p
            .objective(&(y + 0.1)?, &x)?
            .sum_all()?
            .to_scalar::<f64>()?;
        assert!(f1 > f0);
    }
    // toy1d: y*(x) = sin x + x(1 + 0.1 cos x) by hand at x = 2.
    let t = Toy1d::new(Toy1dConfig::default())?;
    let y = t
        .solve_exact(&Tensor::new(&[[2.0f64]], &Device::Cpu)?)?
        .unwrap();
    let expect = 2f64.sin() + 2.0 * (1.0 + 0.1 * 2f64.cos());
    assert!((y.flatten_all()?.to_vec1::<f64>()?[0] - expect).abs() < 1e-12);
    Ok(())
}

#[test]
fn bad_contexts_are_refused_with_a_clear_message() -> Result<()> {
    let p = Sphere::new(SphereConfig::default())?;
    let wrong = Tensor::zeros((3, 5), DType::F64, &Device::Cpu)?;
    let e = p.check_contexts(&wrong).unwrap_err().to_string();
    assert!(e.contains("(n, 16)") && e.contains("[3, 5]"), "{e}");
    let nan = Tensor::new(&[[0.0f64, f64::NAN]], &Device::Cpu)?;
    let t = Toy1d::new(Toy1dConfig::default())?;
    assert!(t.check_contexts(&nan).is_err());
    let mut v = vec![0.0f64; 16];
    v[13] = f64::INFINITY;
    let inf = Tensor::from_vec(v, (1, 16), &Device::Cpu)?;
    let e = p.solve_exact(&inf).unwrap_err().to_string();
    assert!(e.contains("column 13") && e.contains("inf"), "{e}");
    Ok(())
}

#[test]
fn bad_problem_settings_are_refused() {
    assert!(Sphere::new(SphereConfig {
        components: 0,
        ..Default::default()
    })
    .is_err());
    assert!(Sphere::new(SphereConfig {
        gamma: -1.0,
        ..Default::default()
    })
    .is_err());
    assert!(Toy1d::new(Toy1dConfig { range: f64::NAN }).is_err());
    assert!(ProblemConfig::default_for("nope").is_err());
}
