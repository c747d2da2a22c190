use amortize::eval::{fixed_point_comparison, solver_iterates};
use amortize::model::{HyperAa, HyperAaConfig, HyperAaWeights, NeuralFp, NeuralFpConfig};
use amortize::prelude::*;
use amortize::problem::{
    normalised_residual, ElasticNetConfig, ElasticNetIsta, FixedPointMap, FixedPointToy,
    FixedPointToyConfig,
};
use amortize::solver::Anderson;
use amortize::testing::max_abs_diff;
use amortize::train::GradientEstimator;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn small_enr() -> Result<ElasticNetIsta> {
    ElasticNetIsta::new(ElasticNetConfig {
        rows: 6,
        cols: 5,
        density: 0.5,
        ..ElasticNetConfig::default()
    })
}

fn contexts(problem: &dyn Problem, n: usize, seed: u64) -> Result<Tensor> {
    problem.sample_contexts(n, &mut StdRng::seed_from_u64(seed), &Device::Cpu)
}

fn rows(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    Ok(t.to_dtype(DType::F64)?.to_vec2()?)
}

/// A, b, t of row `i` of elastic-net contexts, by hand.
fn unpack(x: &[f64], m: usize, n: usize) -> (Vec<f64>, Vec<f64>, f64) {
    (
        x[..m * n].to_vec(),
        x[m * n..m * n + m].to_vec(),
        x[m * n + m],
    )
}

/// Iterates `(4, 5)` with entries wave(0.0), wave(1.0), …, in f64.
fn wavy_iterates(wave: impl Fn(f64) -> f64) -> Result<Tensor> {
    let v: Vec<f64> = (0..20).map(|i| wave(i as f64)).collect();
    Ok(Tensor::from_vec(v, (4, 5), &Device::Cpu)?)
}

/// ∇φ(y) = Aᵀ(Ay − b) + λ₂y of the elastic net's smooth part, by hand (A row-major m × n).
fn hand_gradient(a: &[f64], b: &[f64], y: &[f64], m: usize, n: usize, l2: f64) -> Vec<f64> {
    let res: Vec<f64> = (0..m)
        .map(|r| (0..n).map(|c| a[r * n + c] * y[c]).sum::<f64>() - b[r])
        .collect();
    (0..n)
        .map(|c| (0..m).map(|r| a[r * n + c] * res[r]).sum::<f64>() + l2 * y[c])
        .collect()
}

#[test]
fn elastic_net_map_matches_a_hand_written_ista_step_and_its_fixed_point_is_optimal() -> Result<()> {
    let p = small_enr()?;
    let (m, n, l1, l2) = (6, 5, 0.1, 0.05);
    let x = contexts(&p, 4, 1)?.to_dtype(DType::F64)?;
    let y = wavy_iterates(|i| (i * 0.7).sin())?;
    let g = rows(&p.apply(&y, &x)?)?;
    let (xs, ys) = (rows(&x)?, rows(&y)?);
    for i in 0..4 {
        let (a, b, t) = unpack(&xs[i], m, n);
        // The step is 1/(‖A‖² + λ₂): check it against the Frobenius bound and a power iteration.
        let frob: f64 = a.iter().map(|v| v * v).sum();
        assert!(
            1.0 / t <= frob + l2 + 1e-9,
            "t must not be below 1/(‖A‖_F² + λ₂)"
        );
        let grad = hand_gradient(&a, &b, &ys[i], m, n, l2);
        for c in 0..n {
            let v = ys[i][c] - t * grad[c];
            let expected = v.signum() * (v.abs() - t * l1).max(0.0);
            assert!(
                (g[i][c] - expected).abs() < 1e-12,
                "g differs at ({i}, {c})"
            );
        }
    }
    // The exact solution satisfies the elastic net's optimality conditions (independent of
    // the map): Aᵀ(Ay − b) + λ₂y + λ₁ sign(y) = 0 on the support, |Aᵀ(Ay − b)| ≤ λ₁ off it.
    let y_star = rows(&p.solve_exact(&x)?.unwrap())?;
    for i in 0..4 {
        let (a, b, _) = unpack(&xs[i], m, n);
        let ys = &y_star[i];
        let grad = hand_gradient(&a, &b, ys, m, n, l2);
        for (c, &smooth) in grad.iter().enumerate() {
            if ys[c].abs() > 1e-9 {
                assert!(
                    (smooth + l1 * ys[c].signum()).abs() < 1e-7,
                    "stationarity at ({i}, {c})"
                );
            } else {
                assert!(smooth.abs() <= l1 + 1e-7, "subgradient bound at ({i}, {c})");
            }
        }
    }
    Ok(())
}

#[test]
fn elastic_net_coordinate_context_matches_a_hand_computation() -> Result<()> {
    let p = small_enr()?;
    let (m, n, l2) = (6, 5, 0.05);
    let x = contexts(&p, 3, 4)?.to_dtype(DType::F64)?;
    assert_eq!(p.coordinate_context_dim(), 2);
    let context = p
        .coordinate_context(&x)?
        .expect("elastic-net-ista has a context");
    assert_eq!(context.dims3()?, (3, n, 2));
    let context: Vec<Vec<Vec<f64>>> = context.to_vec3()?;
    for (i, row) in rows(&x)?.iter().enumerate() {
        let (a, _, t) = unpack(row, m, n);
        // H = AᵀA + λ₂I, by hand.
        let h = |j: usize, k: usize| -> f64 {
            (0..m).map(|r| a[r * n + j] * a[r * n + k]).sum::<f64>() + if j == k { l2 } else { 0.0 }
        };
        for j in 0..n {
            let shortfall = (t * h(j, j)).log10() / 2.0;
            let dominance = h(j, j) / (0..n).map(|k| h(j, k).abs()).sum::<f64>();
            assert!(
                (context[i][j][0] - shortfall).abs() < 1e-12,
                "shortfall at ({i}, {j})"
            );
            assert!(
                (context[i][j][1] - dominance).abs() < 1e-12,
                "dominance at ({i}, {j})"
            );
            assert!(shortfall <= 1e-12 && dominance > 0.0 && dominance <= 1.0);
        }
    }
    // Families without one give none.
    let toy = FixedPointToy::new(FixedPointToyConfig::default())?;
    assert_eq!(toy.coordinate_context_dim(), 0);
    assert!(toy.coordinate_context(&contexts(&toy, 2, 1)?)?.is_none());
    Ok(())
}

#[test]
fn elastic_net_map_with_per_coordinate_steps_is_preconditioned_ista_with_the_same_fixed_point(
) -> Result<()> {
    let p = small_enr()?;
    let (m, n, l1, l2) = (6, 5, 0.1, 0.05);
    let x = contexts(&p, 4, 7)?.to_dtype(DType::F64)?;
    let y = wavy_iterates(|i| (i * 1.3).cos())?;
    assert!(p.supports_coordinate_steps());
    // Unit steps give the map itself.
    let ones = y.ones_like()?;
    assert_eq!(
        max_abs_diff(&p.apply_with_steps(&y, &x, &ones)?, &p.apply(&y, &x)?)?,
        0.0
    );
    // Jacobi steps dᵢ = 1/(t·Hᵢᵢ), by hand: S_{λ₁/Hᵢᵢ}(yᵢ − ∇ᵢφ(y)/Hᵢᵢ).
    let xs = rows(&x)?;
    let jacobi: Vec<f64> = xs
        .iter()
        .flat_map(|row| {
            let (a, _, t) = unpack(row, m, n);
            (0..n).map(move |c| {
                let hcc = (0..m).map(|r| a[r * n + c].powi(2)).sum::<f64>() + l2;
                1.0 / (t * hcc)
            })
        })
        .collect();
    let steps = Tensor::from_vec(jacobi.clone(), (4, 5), &Device::Cpu)?;
    let gd = rows(&p.apply_with_steps(&y, &x, &steps)?)?;
    let ys = rows(&y)?;
    for i in 0..4 {
        let (a, b, t) = unpack(&xs[i], m, n);
        let grad = hand_gradient(&a, &b, &ys[i], m, n, l2);
        for c in 0..n {
            let step = t * jacobi[i * n + c]; // 1/Hcc
            let v = ys[i][c] - step * grad[c];
            let expected = v.signum() * (v.abs() - step * l1).max(0.0);
            assert!(
                (gd[i][c] - expected).abs() < 1e-10,
                "g_D differs at ({i}, {c}): {} vs {expected}",
                gd[i][c]
            );
        }
    }
    // Any positive steps keep the elastic net's solution fixed.
    let y_star = p.solve_exact(&x)?.unwrap();
    let random = Tensor::rand(0.1, 3.0, (4, 5), &Device::Cpu)?;
    for d in [&steps, &random] {
        let moved = max_abs_diff(&p.apply_with_steps(&y_star, &x, d)?, &y_star)?;
        assert!(moved < 1e-8, "y* moved by {moved}");
    }
    // A shape mismatch is an error, and families without steps refuse.
    let e = p
        .apply_with_steps(&y, &x, &Tensor::ones((4, 4), DType::F64, &Device::Cpu)?)
        .expect_err("wrong shape");
    assert!(e.to_string().contains("per-coordinate steps"), "{e}");
    let toy = FixedPointToy::new(FixedPointToyConfig::default())?;
    assert!(!toy.supports_coordinate_steps());
    let xt = contexts(&toy, 2, 1)?;
    let yt = Tensor::zeros((2, 1), DType::F32, &Device::Cpu)?;
    assert!(toy.apply_with_steps(&yt, &xt, &yt.ones_like()?).is_err());
    Ok(())
}

#[test]
fn normalised_residual_is_one_at_zero_and_scale_free() -> Result<()> {
    let p = small_enr()?;
    let x = contexts(&p, 5, 2)?.to_dtype(DType::F64)?;
    let zero = Tensor::zeros((5, 5), DType::F64, &Device::Cpu)?;
    let at_zero: Vec<f64> = p.objective(&zero, &x)?.to_vec1()?;
    for v in &at_zero {
        assert!((v - 1.0).abs() < 1e-12, "f(0) = {v}, expected 1");
    }
    let y = Tensor::ones((5, 5), DType::F64, &Device::Cpu)?;
    let f: Vec<f64> = normalised_residual(&p, &y, &x)?.to_vec1()?;
    let r: Vec<f64> = p.residual(&y, &x)?.to_vec1()?;
    let r0: Vec<f64> = p.residual(&zero, &x)?.to_vec1()?;
    for i in 0..5 {
        assert!((f[i] - r[i] / r0[i]).abs() < 1e-12);
    }
    // The fixed point has a normalised residual of (almost) zero.
    let y_star = p.solve_exact(&x)?.unwrap();
    let f_star: Vec<f64> = p.objective(&y_star, &x)?.to_vec1()?;
    assert!(f_star.iter().all(|v| *v < 1e-8), "{f_star:?}");
    // On the toy map g(y; x) = x − 2 sin y + 0.9y(1 + 0.1 cos y)², |g(0)| = |x|.
    let toy = FixedPointToy::new(FixedPointToyConfig::default())?;
    let xt = Tensor::new(&[[0.5f64], [-0.25]], &Device::Cpu)?;
    let yt = Tensor::new(&[[0.3f64], [0.1]], &Device::Cpu)?;
    let ft: Vec<f64> = toy.objective(&yt, &xt)?.to_vec1()?;
    for (i, (xv, yv)) in [(0.5f64, 0.3f64), (-0.25, 0.1)].into_iter().enumerate() {
        let g = xv - 2.0 * yv.sin() + 0.9 * yv * (1.0 + 0.1 * yv.cos()).powi(2);
        assert!((ft[i] - (g - yv).abs() / xv.abs()).abs() < 1e-12);
    }
    Ok(())
}

#[test]
fn neural_fp_with_learned_parts_off_reproduces_anderson_exactly() -> Result<()> {
    let p = small_enr()?;
    let x = contexts(&p, 6, 3)?;
    for (init, coordinatewise, precondition) in [
        (vec![], false, false),
        (vec![16], false, false),
        (vec![], true, false),
        (vec![16], true, false),
        (vec![16], false, true),
        (vec![16], true, true),
    ] {
        let model = NeuralFp::new(
            NeuralFpConfig {
                steps: 12,
                memory: 3,
                init,
                hidden: 8,
                coordinatewise,
                precondition,
                ..NeuralFpConfig::default()
            },
            &p,
            &mut StdRng::seed_from_u64(0),
            &Device::Cpu,
        )?;
        let pred = model.forward(&x, &p)?;
        let zero = Tensor::zeros((6, 5), DType::F32, &Device::Cpu)?;
        let aa = solver_iterates(&Anderson::new(&p, 3, 1.0, 1e-3)?, &zero, &x, 12)?;
        assert_eq!(pred.iterates.len(), aa.len());
        for (k, (a, b)) in pred.iterates.iter().zip(&aa).enumerate() {
            assert_eq!(
                max_abs_diff(a, b)?,
                0.0,
                "iterate {k} differs from Anderson's"
            );
        }
    }
    // So does untrained HyperAA in its correction form (up to rounding: it forms βḡ + (1 − β)ȳ).
    for precondition in [false, true] {
        let model = HyperAa::new(
            HyperAaConfig {
                steps: 12,
                memory: 3,
                init: vec![16],
                hidden: vec![8],
                precondition,
                ..HyperAaConfig::default()
            },
            &p,
            &mut StdRng::seed_from_u64(0),
            &Device::Cpu,
        )?;
        let pred = model.forward(&x, &p)?;
        let zero = Tensor::zeros((6, 5), DType::F32, &Device::Cpu)?;
        let aa = solver_iterates(&Anderson::new(&p, 3, 1.0, 1e-3)?, &zero, &x, 12)?;
        for (k, (a, b)) in pred.iterates.iter().zip(&aa).enumerate() {
            let d = max_abs_diff(a, b)?;
            assert!(
                d < 1e-5,
                "HyperAA iterate {k} differs from Anderson's by {d}"
            );
        }
    }
    Ok(())
}

/// ∂L/∂θ by autodiff against central differences for every parameter tensor (a few entries
/// each), L = the mean normalised residual summed over iterates, in f64.
fn check_gradients(model: &dyn Model, problem: &dyn Problem, x: &Tensor, tol: f64) -> Result<()> {
    let loss = |m: &dyn Model| -> Result<Tensor> {
        let pred = m.forward(x, problem)?;
        let mut total =
            Loss::Objective.value_summed(&pred, &IterateWeights::Uniform, x, None, problem)?;
        if let Some(p) = &pred.penalty {
            total = total.add(p)?;
        }
        Ok(total)
    };
    let grads = loss(model)?.backward()?;
    for (name, var) in model.params().iter() {
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"))
            .flatten_all()?
            .to_vec1()?;
        let base = var.as_tensor().copy()?;
        let flat: Vec<f64> = base.flatten_all()?.to_vec1()?;
        for idx in [0, flat.len() / 2, flat.len() - 1] {
            let h = 1e-6;
            let at = |delta: f64| -> Result<f64> {
                let mut v = flat.clone();
                v[idx] += delta;
                var.set(&Tensor::from_vec(v, base.dims(), &Device::Cpu)?)?;
                let l: f64 = loss(model)?.to_scalar()?;
                Ok(l)
            };
            let fd = (at(h)? - at(-h)?) / (2.0 * h);
            var.set(&base)?;
            assert!(
                (fd - g[idx]).abs() <= tol * (1.0 + fd.abs()),
                "{name}[{idx}]: autodiff {} vs finite differences {fd}",
                g[idx]
            );
        }
    }
    Ok(())
}

/// Moves every parameter away from its (partly zero) initialisation so that every path of
/// the graph carries gradient.
fn perturb(model: &dyn Model, seed: u64) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    for v in model.params().vars() {
        let noise = Tensor::randn(0.0, 0.1, v.dims(), &Device::Cpu)?.to_dtype(DType::F64)?;
        let _ = &mut rng;
        v.set(&v.as_tensor().add(&noise)?)?;
    }
    Ok(())
}

#[test]
fn neural_fp_and_hyper_aa_gradients_match_finite_differences() -> Result<()> {
    let p = small_enr()?;
    let x = contexts(&p, 3, 4)?.to_dtype(DType::F64)?;
    // NeuralFP through Anderson's least-squares weights (their custom op's implicit backward),
    // with one GRU on the whole vector and with the coordinatewise GRU (which also reads the
    // family's per-coordinate context), and with the learned preconditioner of the map.
    for (coordinatewise, precondition, seed, noise_seed) in [
        (false, false, 1, 2),
        (true, false, 5, 6),
        (true, true, 7, 8),
    ] {
        let nfp = NeuralFp::with_dtype(
            NeuralFpConfig {
                steps: 4,
                memory: 2,
                init: vec![6],
                hidden: 5,
                truncated: false,
                coordinatewise,
                precondition,
                ..NeuralFpConfig::default()
            },
            &p,
            &mut StdRng::seed_from_u64(seed),
            DType::F64,
            &Device::Cpu,
        )?;
        perturb(&nfp, noise_seed)?;
        check_gradients(&nfp, &p, &x, 1e-5)?;
    }
    // HyperAA is differentiable throughout, its penalty Ω(α) included.
    let haa = HyperAa::with_dtype(
        HyperAaConfig {
            steps: 4,
            memory: 2,
            init: vec![6],
            hidden: vec![7],
            penalty: 0.0,
            truncated: false,
            ..HyperAaConfig::default()
        },
        &p,
        &mut StdRng::seed_from_u64(3),
        DType::F64,
        &Device::Cpu,
    )?;
    perturb(&haa, 4)?;
    check_gradients(&haa, &p, &x, 1e-5)?;
    // And through its learned preconditioner of the map.
    let haa = HyperAa::with_dtype(
        HyperAaConfig {
            steps: 4,
            memory: 2,
            init: vec![],
            hidden: vec![7],
            penalty: 0.0,
            truncated: false,
            precondition: true,
            ..HyperAaConfig::default()
        },
        &p,
        &mut StdRng::seed_from_u64(9),
        DType::F64,
        &Device::Cpu,
    )?;
    perturb(&haa, 10)?;
    check_gradients(&haa, &p, &x, 1e-5)?;
    Ok(())
}

#[test]
fn hyper_aa_mixes_on_the_simplex_and_its_penalty_anneals() -> Result<()> {
    let p = small_enr()?;
    let x = contexts(&p, 8, 5)?;
    let model = HyperAa::new(
        HyperAaConfig {
            steps: 6,
            memory: 2,
            init: vec![],
            weights: HyperAaWeights::Simplex,
            ..HyperAaConfig::default()
        },
        &p,
        &mut StdRng::seed_from_u64(0),
        &Device::Cpu,
    )?;
    // Untrained: α uniform over the k present pairs and β = 0.95, so the first step is
    // y¹ = 0.95 g(0) from y⁰ = 0.
    let pred = model.forward(&x, &p)?;
    let zero = Tensor::zeros((8, 5), DType::F32, &Device::Cpu)?;
    let expected = p.apply(&zero, &x)?.affine(0.95, 0.0)?;
    assert!(max_abs_diff(&pred.iterates[1], &expected)? < 1e-6);
    let penalty: f64 = pred
        .penalty
        .expect("hyper-aa has a penalty")
        .to_dtype(DType::F64)?
        .to_scalar()?;
    assert!(penalty > 0.0, "uniform α differs from Anderson's weights");
    let cfg = TrainConfig {
        steps: 100,
        penalty_anneal: 0.5,
        ..TrainConfig::default()
    };
    assert_eq!(cfg.penalty_weight(0), 1.0);
    assert!((cfg.penalty_weight(25) - 0.5).abs() < 1e-12);
    assert_eq!(cfg.penalty_weight(50), 0.0);
    assert_eq!(cfg.penalty_weight(99), 0.0);
    let off = TrainConfig {
        penalty_anneal: 0.0,
        ..cfg.clone()
    };
    assert_eq!(off.penalty_weight(0), 0.0);
    assert!(TrainConfig {
        penalty_anneal: 1.5,
        ..cfg
    }
    .validate()
    .is_err());
    Ok(())
}

/// Untrained, the model is Anderson exactly (tested above), so any gain is learned.
#[test]
fn quick_neural_fp_training_beats_anderson_at_its_depth() -> Result<()> {
    let config = ProblemConfig::ElasticNetIsta(ElasticNetConfig {
        rows: 10,
        cols: 10,
        density: 0.3,
        ..ElasticNetConfig::default()
    });
    let p = config.build()?;
    // The last case trains the preconditioner by ES (the hybrid estimator).
    let hybrid = GradientEstimator::Hybrid {
        sigma: 0.05,
        samples: 2,
    };
    for (coordinatewise, precondition, gradient) in [
        (false, false, GradientEstimator::Autodiff),
        (true, false, GradientEstimator::Autodiff),
        (true, true, GradientEstimator::Autodiff),
        (true, true, hybrid),
    ] {
        let model = ModelConfig::NeuralFp(NeuralFpConfig {
            steps: 8,
            memory: 3,
            init: vec![32],
            hidden: 16,
            coordinatewise,
            precondition,
            ..NeuralFpConfig::default()
        })
        .build(p.as_ref(), &mut StdRng::seed_from_u64(0), &Device::Cpu)?;
        let train = TrainConfig {
            steps: 150,
            batch_size: 64,
            learning_rate: 3e-3,
            iterates: IterateWeights::Uniform,
            clip_grad_norm: Some(1.0),
            eval_every: 0,
            eval_size: 64,
            gradient,
            ..TrainConfig::default()
        };
        Trainer::new(p.as_ref(), config.clone(), model.as_ref(), train, 0)?.run()?;
        let x = contexts(p.as_ref(), 256, 99)?;
        let curves =
            fixed_point_comparison(p.as_ref(), Some(model.as_ref()), &x, 8, 3, 1e-3, 1e-4)?;
        let (anderson, learned) = (&curves[1], &curves[2]);
        assert!(
            learned.mean[8] < 0.97 * anderson.mean[8],
            "coordinatewise {coordinatewise}, precondition {precondition}, {gradient:?}: learned {} vs Anderson {} at iteration 8",
            learned.mean[8],
            anderson.mean[8]
        );
    }
    Ok(())
}

/// The hybrid estimator trains a model's whole-run parameters by ES; a model without them, or
/// a bad σ, is refused by name.
#[test]
fn hybrid_gradient_refuses_a_model_without_a_preconditioner() -> Result<()> {
    let config = ProblemConfig::ElasticNetIsta(ElasticNetConfig {
        rows: 6,
        cols: 5,
        ..ElasticNetConfig::default()
    });
    let p = config.build()?;
    let model = ModelConfig::NeuralFp(NeuralFpConfig {
        steps: 3,
        coordinatewise: true,
        precondition: false,
        ..NeuralFpConfig::default()
    })
    .build(p.as_ref(), &mut StdRng::seed_from_u64(0), &Device::Cpu)?;
    let train = TrainConfig {
        steps: 2,
        batch_size: 8,
        eval_every: 0,
        eval_size: 8,
        gradient: GradientEstimator::Hybrid {
            sigma: 0.05,
            samples: 1,
        },
        ..TrainConfig::default()
    };
    let e = Trainer::new(p.as_ref(), config.clone(), model.as_ref(), train.clone(), 0)?
        .run()
        .expect_err("no whole-run parameters");
    let e = e.to_string();
    assert!(e.contains("hybrid") && e.contains("neural-fp"), "{e}");
    let bad = TrainConfig {
        gradient: GradientEstimator::Hybrid {
            sigma: 0.0,
            samples: 1,
        },
        ..train
    };
    let e = bad.validate().expect_err("sigma 0").to_string();
    assert!(e.contains("sigma"), "{e}");
    Ok(())
}

#[test]
fn fixed_point_models_and_families_refuse_bad_input() -> Result<()> {
    let sphere = Sphere::new(SphereConfig::default())?;
    let mut rng = StdRng::seed_from_u64(0);
    let e = NeuralFp::new(NeuralFpConfig::default(), &sphere, &mut rng, &Device::Cpu)
        .err()
        .expect("the sphere has no fixed-point map");
    assert!(e.to_string().contains("fixed-point family"), "{e}");
    let e = HyperAa::new(HyperAaConfig::default(), &sphere, &mut rng, &Device::Cpu)
        .err()
        .expect("the sphere has no fixed-point map");
    assert!(e.to_string().contains("fixed-point family"), "{e}");
    // The learned preconditioner needs a map with per-coordinate steps.
    let toy = FixedPointToy::new(FixedPointToyConfig::default())?;
    let e = NeuralFp::new(
        NeuralFpConfig {
            coordinatewise: true,
            precondition: true,
            ..NeuralFpConfig::default()
        },
        &toy,
        &mut rng,
        &Device::Cpu,
    )
    .err()
    .expect("the toy map has no per-coordinate steps");
    let e = e.to_string();
    assert!(
        e.contains("per-coordinate steps") && e.contains("fixed-point-toy"),
        "{e}"
    );
    assert!(ElasticNetIsta::new(ElasticNetConfig {
        l2: 0.0,
        ..ElasticNetConfig::default()
    })
    .is_err());
    assert!(ElasticNetIsta::new(ElasticNetConfig {
        density: 1.5,
        ..ElasticNetConfig::default()
    })
    .is_err());
    let p = small_enr()?;
    let e = p
        .contexts(&[(vec![1.0; 29], vec![0.0; 6])], &Device::Cpu)
        .expect_err("wrong A size");
    assert!(e.to_string().contains("|A| = 29"), "{e}");
    let mut a = vec![0.5; 30];
    a[3] = f64::NAN;
    let e = p
        .contexts(&[(a, vec![0.0; 6])], &Device::Cpu)
        .expect_err("NaN in A");
    assert!(e.to_string().contains("NaN"), "{e}");
    // A context whose step t is not positive.
    let mut x: Vec<f32> = rows(&contexts(&p, 1, 0)?)?[0]
        .iter()
        .map(|v| *v as f32)
        .collect();
    *x.last_mut().unwrap() = -1.0;
    let x = Tensor::from_vec(x, (1, 37), &Device::Cpu)?;
    let e = p.solve_exact(&x).expect_err("negative step");
    assert!(e.to_string().contains("step t"), "{e}");
    Ok(())
}

#[test]
fn neural_fp_checkpoint_round_trips() -> Result<()> {
    let scratch = amortize::testing::ScratchDir::new("test-nfp").unwrap();
    let dir = scratch.join("model");
    let config = ProblemConfig::FixedPointToy(FixedPointToyConfig::default());
    let p = config.build()?;
    let model = ModelConfig::NeuralFp(NeuralFpConfig {
        steps: 5,
        init: vec![8],
        hidden: 4,
        ..NeuralFpConfig::default()
    })
    .build(p.as_ref(), &mut StdRng::seed_from_u64(0), &Device::Cpu)?;
    let train = TrainConfig {
        steps: 5,
        batch_size: 16,
        eval_every: 0,
        eval_size: 16,
        ..TrainConfig::default()
    };
    Trainer::new(p.as_ref(), config.clone(), model.as_ref(), train, 0)?
        .checkpoint_to(&dir)
        .run()?;
    let loaded = Checkpoint::load_for(&dir, &config, &Device::Cpu)?;
    let x = contexts(p.as_ref(), 7, 1)?;
    let a = model.forward(&x, p.as_ref())?.y;
    let b = loaded.model.forward(&x, loaded.problem.as_ref())?.y;
    assert_eq!(max_abs_diff(&a, &b)?, 0.0);
    Ok(())
}

/// The ADMM map's fixed point is the QP's solution (against the ADMM solver run tightly, which
/// itself is checked against Clarabel), and the plain iteration converges on it.
#[test]
fn qp_admm_fixed_point_solves_the_qp() -> Result<()> {
    use amortize::problem::{QpAdmm, QpAdmmConfig};
    use amortize::solver::qp::{Admm, AdmmSettings, QpClass};
    let family = QpAdmm::new(QpAdmmConfig {
        size: 5,
        ..QpAdmmConfig::default()
    })?;
    let (n, m) = family.dims();
    assert_eq!((n, m), (5, 50));
    let mut rng = StdRng::seed_from_u64(4);
    let qps: Vec<_> = (0..3)
        .map(|_| QpClass::Random.generate(5, &mut rng))
        .collect::<Result<_>>()?;
    let rows: Vec<f64> = qps
        .iter()
        .map(|qp| family.context_of(qp))
        .collect::<Result<Vec<_>>>()?
        .concat();
    let x = Tensor::from_vec(rows, (3, family.context_dim()), &Device::Cpu)?;
    let s = family.solve_exact(&x)?.unwrap();
    // Independent of the solver: the ADMM map written as tensor ops leaves the solution fixed.
    let moved: Vec<f64> = family.residual(&s, &x)?.to_vec1()?;
    let scale: Vec<f64> = s.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
    for (r, sc) in moved.iter().zip(&scale) {
        assert!(*r < 1e-6 * sc.max(1.0), "‖g(s*) − s*‖ = {r}");
    }
    let y = rows_of(&family.primal(&s)?)?;
    let tight = Admm::new(AdmmSettings {
        max_iters: 100_000,
        ..AdmmSettings::accurate(1e-10)
    })?;
    for (i, qp) in qps.iter().enumerate() {
        let reference = tight.solve(qp, None)?;
        let err = y[i]
            .iter()
            .zip(&reference.y)
            .fold(0.0f64, |e, (a, b)| e.max((a - b).abs()));
        assert!(err < 1e-6, "QP {i}: ‖y − y_admm‖∞ = {err}");
    }
    let curves = fixed_point_comparison(&family, None, &x, 400, 5, 1e-3, 1e-3)?;
    let (plain, anderson) = (&curves[0], &curves[1]);
    // The plain ADMM iteration converges on all three. Anderson (memory 5, no safeguard) is
    // not faster on this non-smooth map (measured: 137 and 390 iterations against 84 and 156,
    // one not within 400), which is why learned acceleration is interesting here.
    assert_eq!(plain.solved_fraction(), 1.0);
    assert!(anderson.mean[400] < 1e-2, "Anderson still makes progress");
    assert!(QpAdmm::new(QpAdmmConfig {
        alpha: 2.5,
        ..QpAdmmConfig::default()
    })
    .is_err());
    let other = QpClass::Random.generate(6, &mut rng)?;
    assert!(family.context_of(&other).is_err(), "a QP of another size");
    Ok(())
}

/// ADMM with one ρᵢ per constraint (`apply_with_steps`) written out by hand in f64 for one
/// instance: K = P + σI + Aᵀdiag(ρ)A solved by Gaussian elimination.
fn hand_admm_step(
    x: &[f64],
    s: &[f64],
    rho: &[f64],
    (n, m): (usize, usize),
    config: &amortize::problem::QpAdmmConfig,
) -> Vec<f64> {
    let (sigma, alpha) = (config.sigma, config.alpha);
    let p = &x[n * n..2 * n * n];
    let a = &x[2 * n * n..2 * n * n + m * n];
    let at = 2 * n * n + m * n;
    let (q, l, u) = (&x[at..at + n], &x[at + n..at + n + m], &x[at + n + m..]);
    let (y, z, lam) = (&s[..n], &s[n..n + m], &s[n + m..]);
    // Augmented [K | rhs].
    let mut k = vec![0.0; n * (n + 1)];
    for r in 0..n {
        for c in 0..n {
            let ata: f64 = (0..m).map(|i| rho[i] * a[i * n + r] * a[i * n + c]).sum();
            k[r * (n + 1) + c] = p[r * n + c] + ata + if r == c { sigma } else { 0.0 };
        }
        let atw: f64 = (0..m)
            .map(|i| a[i * n + r] * (rho[i] * z[i] - lam[i]))
            .sum();
        k[r * (n + 1) + n] = sigma * y[r] - q[r] + atw;
    }
    for c in 0..n {
        let pivot = k[c * (n + 1) + c];
        for r in c + 1..n {
            let f = k[r * (n + 1) + c] / pivot;
            for j in c..=n {
                k[r * (n + 1) + j] -= f * k[c * (n + 1) + j];
            }
        }
    }
    let mut yt = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|j| k[r * (n + 1) + j] * yt[j]).sum();
        yt[r] = (k[r * (n + 1) + n] - s) / k[r * (n + 1) + r];
    }
    let mut out: Vec<f64> = (0..n)
        .map(|i| alpha * yt[i] + (1.0 - alpha) * y[i])
        .collect();
    let mut lam_next = vec![0.0; m];
    for i in 0..m {
        let zt: f64 = (0..n).map(|j| a[i * n + j] * yt[j]).sum();
        let relaxed = alpha * zt + (1.0 - alpha) * z[i];
        let zn = (relaxed + lam[i] / rho[i]).max(l[i]).min(u[i]);
        out.push(zn);
        lam_next[i] = lam[i] + rho[i] * (relaxed - zn);
    }
    out.extend(lam_next);
    out
}

/// ADMM's per-constraint step as the map's preconditioner: at steps = 1 it is the family's
/// map, with other positive steps it is the hand-written ADMM iteration with ρᵢ = ρ·dᵢ, whose
/// fixed point is still the QP's solution; changing the steps between calls refactors K (the
/// factor cache is keyed on the tensors, not reused across them).
#[test]
fn qp_admm_per_constraint_steps_precondition_admm_with_the_same_fixed_point() -> Result<()> {
    use amortize::problem::{QpAdmm, QpAdmmConfig};
    use amortize::solver::qp::QpClass;
    let config = QpAdmmConfig {
        size: 5,
        ..QpAdmmConfig::default()
    };
    let family = QpAdmm::new(config.clone())?;
    let (n, m) = family.dims();
    let dim = n + 2 * m;
    assert!(family.supports_coordinate_steps() && !family.coordinate_steps_differentiable());
    let mut rng = StdRng::seed_from_u64(11);
    let rows: Vec<f64> = (0..2)
        .map(|_| family.context_of(&QpClass::Random.generate(5, &mut rng)?))
        .collect::<Result<Vec<_>>>()?
        .concat();
    let x = Tensor::from_vec(rows, (2, family.context_dim()), &Device::Cpu)?;
    let s = Tensor::randn(0.0, 1.0, (2, dim), &Device::Cpu)?;
    let ones = Tensor::ones((2, dim), DType::F64, &Device::Cpu)?;
    let gap = max_abs_diff(
        &family.apply_with_steps(&s, &x, &ones)?,
        &family.apply(&s, &x)?,
    )?;
    assert!(gap < 1e-9, "steps = 1 is the family's map ({gap})");
    // Multipliers between 1/5 and 5 on the z-coordinates; y's and λ's are not read.
    let d: Vec<f64> = (0..2 * dim)
        .map(|k| 5f64.powf(((k * 37 % 101) as f64 / 50.0) - 1.0))
        .collect();
    let steps = Tensor::from_vec(d.clone(), (2, dim), &Device::Cpu)?;
    let out = rows_of(&family.apply_with_steps(&s, &x, &steps)?)?;
    let (xs, ss) = (rows_of(&x)?, rows_of(&s)?);
    for i in 0..2 {
        let rho: Vec<f64> = (0..m).map(|c| config.rho * d[i * dim + n + c]).collect();
        let hand = hand_admm_step(&xs[i], &ss[i], &rho, (n, m), &config);
        let err = out[i]
            .iter()
            .zip(&hand)
            .fold(0.0f64, |e, (a, b)| e.max((a - b).abs()));
        assert!(err < 1e-9, "instance {i}: ‖g_D − hand‖∞ = {err}");
    }
    let again = family.apply_with_steps(&s, &x, &ones)?;
    assert!(
        max_abs_diff(&again, &family.apply(&s, &x)?)? < 1e-9,
        "refactored for new steps"
    );
    // A variable set in place keeps its tensor's id; its new steps are still seen.
    let var = candle_core::Var::from_tensor(&ones)?;
    family.apply_with_steps(&s, &x, var.as_tensor())?;
    var.set(&steps)?;
    let moved = family.apply_with_steps(&s, &x, var.as_tensor())?;
    assert_eq!(
        max_abs_diff(&moved, &family.apply_with_steps(&s, &x, &steps)?)?,
        0.0,
        "the steps set in place"
    );
    // The QP's solution is a fixed point of the preconditioned map too.
    let star = family.solve_exact(&x)?.unwrap();
    let moved: Vec<f64> = family
        .apply_with_steps(&star, &x, &steps)?
        .sub(&star)?
        .sqr()?
        .sum(1)?
        .sqrt()?
        .to_vec1()?;
    let scale: Vec<f64> = star.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
    for (r, sc) in moved.iter().zip(&scale) {
        assert!(*r < 1e-6 * sc.max(1.0), "‖g_D(s*) − s*‖ = {r}");
    }
    // Descriptors: none for y, the same four for z and λ of a constraint.
    let context = family
        .coordinate_context(&x)?
        .expect("per-constraint context");
    assert_eq!(context.dims(), &[2, dim, family.coordinate_context_dim()]);
    let c = context.to_vec3::<f64>()?;
    assert!(c[0][..n].iter().flatten().all(|v| *v == 0.0));
    assert_eq!(c[1][n + 3], c[1][n + m + 3]);
    // The random class has no equality rows; its widths are u − l ∈ (0, 2).
    assert!(c[0][n..]
        .iter()
        .all(|f| f[2] == 0.0 && f[3] < (2f64).log10() / 6.0));
    let bad = Tensor::full(-1.0, (2, dim), &Device::Cpu)?.to_dtype(DType::F64)?;
    let e = family
        .apply_with_steps(&s, &x, &bad)
        .expect_err("negative steps");
    assert!(e.to_string().contains("positive"), "{e}");
    let e = family
        .apply_with_steps(&s, &x, &ones.narrow(1, 0, n)?)
        .expect_err("misshapen steps");
    assert!(e.to_string().contains("shape"), "{e}");
    Ok(())
}

/// On `qp-admm` the learned preconditioner sets ρ, which backpropagation cannot differentiate:
/// training it by autodiff is refused by name.
#[test]
fn qp_admm_preconditioner_needs_the_hybrid_estimator() -> Result<()> {
    use amortize::problem::QpAdmmConfig;
    let config = ProblemConfig::QpAdmm(QpAdmmConfig {
        size: 3,
        ..QpAdmmConfig::default()
    });
    let p = config.build()?;
    let model = ModelConfig::HyperAa(HyperAaConfig {
        steps: 3,
        init: vec![],
        precondition: true,
        ..HyperAaConfig::default()
    })
    .build(p.as_ref(), &mut StdRng::seed_from_u64(0), &Device::Cpu)?;
    let train = TrainConfig {
        steps: 2,
        batch_size: 4,
        eval_every: 0,
        eval_size: 4,
        ..TrainConfig::default()
    };
    let e = Trainer::new(p.as_ref(), config.clone(), model.as_ref(), train.clone(), 0)?
        .run()
        .expect_err("autodiff cannot train the ADMM preconditioner");
    let e = e.to_string();
    assert!(e.contains("hybrid") && e.contains("qp-admm"), "{e}");
    let hybrid = TrainConfig {
        gradient: GradientEstimator::Hybrid {
            sigma: 0.05,
            samples: 1,
        },
        ..train
    };
    Trainer::new(p.as_ref(), config, model.as_ref(), hybrid, 0)?.run()?;
    Ok(())
}

/// A short hybrid training of HyperAA with the per-constraint ρ on `qp-admm` (n = 5, m = 50)
/// learns a step that takes it well below Anderson on the family's map; with
/// the weight corrections held near Anderson's by Ω(α) and Ω(β), the ES-trained ρ is the gain.
#[test]
fn quick_hyper_aa_training_learns_admm_steps_that_beat_anderson() -> Result<()> {
    use amortize::problem::QpAdmmConfig;
    let config = ProblemConfig::QpAdmm(QpAdmmConfig {
        size: 5,
        ..QpAdmmConfig::default()
    });
    let p = config.build()?;
    let model = ModelConfig::HyperAa(HyperAaConfig {
        steps: 20,
        memory: 3,
        init: vec![],
        hidden: vec![16],
        penalty: 100.0,
        beta_penalty: 100.0,
        precondition: true,
        ..HyperAaConfig::default()
    })
    .build(p.as_ref(), &mut StdRng::seed_from_u64(0), &Device::Cpu)?;
    let train = TrainConfig {
        steps: 60,
        batch_size: 32,
        learning_rate: 1e-2,
        loss: Loss::LogObjective,
        iterates: IterateWeights::Linear,
        clip_grad_norm: Some(1.0),
        eval_every: 0,
        eval_size: 32,
        gradient: GradientEstimator::Hybrid {
            sigma: 0.05,
            samples: 2,
        },
        ..TrainConfig::default()
    };
    Trainer::new(p.as_ref(), config, model.as_ref(), train, 0)?.run()?;
    let x = contexts(p.as_ref(), 128, 99)?;
    let curves = fixed_point_comparison(p.as_ref(), Some(model.as_ref()), &x, 80, 3, 1e-3, 1e-3)?;
    let (anderson, learned) = (&curves[1], &curves[2]);
    // Measured: 0.0015 against 0.0029 (plain ADMM 0.0019) at iteration 80.
    assert!(
        learned.mean[80] < 0.7 * anderson.mean[80],
        "learned {} vs Anderson {} at iteration 80",
        learned.mean[80],
        anderson.mean[80]
    );
    Ok(())
}

fn rows_of(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    Ok(t.to_dtype(DType::F64)?.to_vec2()?)
}
