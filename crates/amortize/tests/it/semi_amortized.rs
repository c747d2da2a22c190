use amortize::model::{Adjoint, InitConfig, RateConfig, Unrolled, UnrolledConfig};
use amortize::prelude::*;
use amortize::testing::{finite_difference_grad, max_abs_diff, sample_pair};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar()?)
}

fn unrolled(problem: &dyn Problem, config: UnrolledConfig) -> Result<Unrolled> {
    Unrolled::with_dtype(
        config,
        problem,
        &mut StdRng::seed_from_u64(4),
        DType::F64,
        &Device::Cpu,
    )
}

/// The mean objective of the final iterate.
fn loss(model: &Unrolled, x: &Tensor, problem: &dyn Problem) -> Result<Tensor> {
    Loss::Objective.value(&model.forward_train(x, problem)?, x, None, problem)
}

/// ∂L/∂v by autodiff, and by central finite differences of the whole forward pass.
fn autodiff_and_fd(
    model: &Unrolled,
    var_index: usize,
    x: &Tensor,
    problem: &dyn Problem,
) -> Result<(Tensor, Tensor)> {
    let var = model.params().vars().nth(var_index).unwrap().clone();
    let g = loss(model, x, problem)?
        .backward()?
        .get(var.as_tensor())
        .expect("the parameter is in the graph")
        .clone();
    let v0 = var.as_tensor().copy()?;
    let shape = v0.dims().to_vec();
    let flat = v0.reshape((1, v0.elem_count()))?;
    let fd = finite_difference_grad(&flat, 1e-6, |v| {
        var.set(&v.reshape(shape.as_slice())?)?;
        scalar(&loss(model, x, problem)?)
    })?
    .reshape(shape.as_slice())?;
    var.set(&v0)?;
    Ok((g, fd))
}

/// Full backpropagation through K unrolled steps on the sphere (an MLP init, learned
/// per-step rates; the steps' gradient is the closed form, so the meta-gradient has Hessian
/// terms): every parameter's gradient matches finite differences of the whole unrolled map.
#[test]
fn unrolled_meta_gradient_matches_finite_differences() -> Result<()> {
    let problem = Sphere::new(SphereConfig::default())?;
    let (x, _) = sample_pair(&problem, 3, 5)?;
    let model = unrolled(
        &problem,
        UnrolledConfig {
            init: InitConfig::Mlp(MlpConfig {
                hidden: vec![6],
                activation: amortize::model::Activation::Tanh,
                project_output: true,
            }),
            steps: 3,
            rate: RateConfig::PerStep { initial: 0.3 },
            adjoint: Adjoint::Full,
            update: amortize::model::UpdateRule::Gradient,
        },
    )?;
    let names: Vec<String> = model.params().iter().map(|(n, _)| n.to_owned()).collect();
    assert_eq!(names.last().map(String::as_str), Some("rates"));
    for (i, name) in names.iter().enumerate() {
        let (g, fd) = autodiff_and_fd(&model, i, &x, &problem)?;
        let err = max_abs_diff(&g, &fd)?;
        assert!(
            err < 1e-6,
            "{name}: meta-gradient off finite differences by {err}"
        );
    }
    Ok(())
}

/// First-order and truncated adjoints against their definitions on a quadratic
/// (∇f(y) = Qy − Bx, so ∂ŷᵏ⁺¹/∂ŷᵏ = I − αQ):
/// * first-order: ∂L/∂θ for a constant init is the mean of ∇f at the final iterate (the steps'
///   Jacobian taken as I), and ∂L/∂αₖ = −mean ∇f(ŷᵏ)·∇f(ŷᴷ);
/// * truncated with H = K is full backpropagation, with H = 0 is first-order;
/// * truncated with 0 < H < K is the exact gradient of θ ↦ L(H exact steps from θ + c), with
///   c = ŷᴷ⁻ᴴ − ŷ⁰ held at its value (finite differences of that function).
#[test]
fn first_order_and_truncated_adjoints_match_their_definitions() -> Result<()> {
    let problem = Quadratic::new(QuadraticConfig::default())?;
    let (x, _) = sample_pair(&problem, 4, 6)?;
    let k = 4;
    let config = |adjoint, rate| UnrolledConfig {
        init: InitConfig::Constant { value: 0.5 },
        steps: k,
        rate,
        adjoint,
        update: amortize::model::UpdateRule::Gradient,
    };
    let per_step = RateConfig::PerStep { initial: 0.2 };
    let grads = |model: &Unrolled| -> Result<Vec<Tensor>> {
        let store = loss(model, &x, &problem)?.backward()?;
        Ok(model
            .params()
            .vars()
            .map(|v| store.get(v.as_tensor()).unwrap().clone())
            .collect())
    };

    // First-order, by hand.
    let fo = unrolled(&problem, config(Adjoint::FirstOrder, per_step))?;
    let pred = fo.forward(&x, &problem)?;
    let n = x.dim(0)? as f64;
    let g_final = problem.gradient(&pred.y, &x)?;
    let expect_init = g_final.sum_keepdim(0)?.affine(1.0 / n, 0.0)?;
    let expect_rates: Vec<f64> = (0..k)
        .map(|j| {
            let gj = problem.gradient(&pred.iterates[j], &x)?;
            Ok(-scalar(&gj.mul(&g_final)?.sum_all()?)? / n)
        })
        .collect::<Result<_>>()?;
    let g = grads(&fo)?;
    assert!(max_abs_diff(&g[0], &expect_init)? < 1e-12);
    let got_rates: Vec<f64> = g[1].flatten_all()?.to_vec1()?;
    for (a, b) in got_rates.iter().zip(&expect_rates) {
        assert!(
            (a - b).abs() < 1e-12,
            "first-order rate gradient {a} vs {b}"
        );
    }

    // Truncation at the ends.
    let full = grads(&unrolled(&problem, config(Adjoint::Full, per_step))?)?;
    let t_all = grads(&unrolled(
        &problem,
        config(Adjoint::Truncated { last: k }, per_step),
    )?)?;
    let t_none = grads(&unrolled(
        &problem,
        config(Adjoint::Truncated { last: 0 }, per_step),
    )?)?;
    for i in 0..2 {
        assert!(max_abs_diff(&full[i], &t_all[i])? < 1e-12);
        assert!(max_abs_diff(&g[i], &t_none[i])? < 1e-12);
    }
    assert!(
        max_abs_diff(&full[0], &g[0])? > 1e-3,
        "full and first-order coincide: the test cannot tell them apart"
    );

    // Truncation in the middle, against finite differences of its defining function.
    let h = 2;
    let fixed = RateConfig::Fixed { value: 0.2 };
    let trunc = unrolled(&problem, config(Adjoint::Truncated { last: h }, fixed))?;
    let g_trunc = grads(&trunc)?;
    let theta0 = trunc.params().vars().next().unwrap().as_tensor().copy()?;
    let z_mid = &trunc.forward(&x, &problem)?.iterates[k - h];
    let c = z_mid.sub(&theta0.broadcast_as(z_mid.shape())?)?;
    let tail = unrolled(
        &problem,
        UnrolledConfig {
            init: InitConfig::Constant { value: 0.0 },
            steps: h,
            rate: fixed,
            adjoint: Adjoint::Full,
            update: amortize::model::UpdateRule::Gradient,
        },
    )?;
    let fd = finite_difference_grad(&theta0, 1e-6, |theta| {
        let z = theta.broadcast_as(c.shape())?.add(&c)?;
        // H exact steps from z: the tail model's steps, started at z.
        let mut z = z;
        for _ in 0..h {
            z = z.sub(&problem.gradient(&z, &x)?.affine(0.2, 0.0)?)?;
        }
        scalar(&problem.objective(&z, &x)?.mean_all()?)
    })?;
    assert_eq!(tail.params().len(), 1);
    let err = max_abs_diff(&g_trunc[0], &fd)?;
    assert!(err < 1e-6, "truncated gradient off its definition by {err}");
    assert!(max_abs_diff(&g_trunc[0], &full[0])? > 1e-4);
    Ok(())
}

/// Warm start: the training prediction is the init alone, the prediction adds the K steps;
/// rate shapes follow the configuration; bad settings are refused by name.
#[test]
fn unrolled_variants_have_the_configured_shapes() -> Result<()> {
    let problem = Sphere::new(SphereConfig::default())?;
    let (x, _) = sample_pair(&problem, 5, 7)?;
    let warm = unrolled(
        &problem,
        UnrolledConfig {
            adjoint: Adjoint::WarmStart,
            ..UnrolledConfig::default()
        },
    )?;
    assert_eq!(warm.forward_train(&x, &problem)?.iterates.len(), 1);
    let pred = warm.forward(&x, &problem)?;
    assert_eq!(pred.iterates.len(), 6);
    // Every iterate lies on the sphere.
    for it in &pred.iterates {
        let norms: Vec<f64> = it.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
        assert!(norms.iter().all(|r| (r - 1.0).abs() < 1e-9), "{norms:?}");
    }
    for (rate, shape) in [
        (RateConfig::PerStep { initial: 0.1 }, vec![5, 1]),
        (RateConfig::PerCoordinate { initial: 0.1 }, vec![1, 3]),
        (RateConfig::PerStepCoordinate { initial: 0.1 }, vec![5, 3]),
    ] {
        let m = unrolled(
            &problem,
            UnrolledConfig {
                rate,
                ..UnrolledConfig::default()
            },
        )?;
        let (name, var) = m.params().iter().last().unwrap();
        assert_eq!((name, var.dims().to_vec()), ("rates", shape));
    }
    let fixed = unrolled(
        &problem,
        UnrolledConfig {
            rate: RateConfig::Fixed { value: 0.1 },
            ..UnrolledConfig::default()
        },
    )?;
    assert!(fixed.params().iter().all(|(n, _)| n.starts_with("init.")));
    let err = unrolled(
        &problem,
        UnrolledConfig {
            adjoint: Adjoint::Truncated { last: 9 },
            ..UnrolledConfig::default()
        },
    )
    .err()
    .expect("9 > 5 steps");
    assert!(err.to_string().contains("adjoint.last"), "{err}");
    Ok(())
}

/// End-to-end training of the unrolled steps on L_Σ beats the warm start (the same model
/// trained on its init alone, refined by the same steps at prediction time) on the sphere.
#[test]
fn semi_amortized_training_beats_the_warm_start_on_the_sphere() -> Result<()> {
    let problem = Sphere::new(SphereConfig::default())?;
    let pc = ProblemConfig::Sphere(SphereConfig::default());
    let x = problem.sample_contexts(512, &mut StdRng::seed_from_u64(77), &Device::Cpu)?;
    let mut results = Vec::new();
    for adjoint in [Adjoint::WarmStart, Adjoint::Full] {
        let model = ModelConfig::Unrolled(UnrolledConfig {
            init: InitConfig::Mlp(MlpConfig {
                hidden: vec![32, 32],
                ..MlpConfig::default()
            }),
            steps: 3,
            rate: RateConfig::PerStep { initial: 0.05 },
            adjoint,
            update: amortize::model::UpdateRule::Gradient,
        })
        .build(&problem, &mut StdRng::seed_from_u64(0), &Device::Cpu)?;
        let train = TrainConfig {
            steps: 300,
            batch_size: 64,
            learning_rate: 3e-3,
            iterates: IterateWeights::Uniform,
            eval_every: 0,
            eval_size: 64,
            ..TrainConfig::default()
        };
        Trainer::new(&problem, pc.clone(), model.as_ref(), train, 0)?.run()?;
        let y = model.forward(&x, &problem)?.y;
        results.push(scalar(&problem.objective(&y, &x)?.mean_all()?)?);
    }
    assert!(
        results[1] < results[0],
        "semi-amortized {} vs warm start {}",
        results[1],
        results[0]
    );
    Ok(())
}

/// The antithetic ES estimator (eq. 15) is unbiased: on a quadratic loss (whose smoothed
/// gradient equals its gradient) the mean of 400 independent estimates lies within 4.5
/// standard errors of the autodiff gradient in every coordinate, and θ is restored.
#[test]
fn es_gradient_is_unbiased_on_a_quadratic() -> Result<()> {
    use amortize::train::es_gradient;
    let problem = Quadratic::new(QuadraticConfig::default())?;
    let (x, _) = sample_pair(&problem, 8, 12)?;
    let model = unrolled(
        &problem,
        UnrolledConfig {
            init: InitConfig::Constant { value: 0.3 },
            steps: 0,
            rate: RateConfig::Fixed { value: 0.1 },
            adjoint: Adjoint::Full,
            update: amortize::model::UpdateRule::Gradient,
        },
    )?;
    let vars: Vec<candle_core::Var> = model.params().vars().cloned().collect();
    assert_eq!(vars.len(), 1);
    let theta0 = vars[0].as_tensor().copy()?;
    let exact = loss(&model, &x, &problem)?
        .backward()?
        .get(vars[0].as_tensor())
        .unwrap()
        .flatten_all()?
        .to_vec1::<f64>()?;
    let runs = 400;
    let mut estimates = Vec::with_capacity(runs);
    for seed in 0..runs as u64 {
        let (g, _) = es_gradient(&vars, 0.5, 2, &mut StdRng::seed_from_u64(seed), || {
            scalar(&loss(&model, &x, &problem)?)
        })?;
        estimates.push(g[0].flatten_all()?.to_vec1::<f64>()?);
    }
    assert_eq!(max_abs_diff(vars[0].as_tensor(), &theta0)?, 0.0);
    for (j, &truth) in exact.iter().enumerate() {
        let values: Vec<f64> = estimates.iter().map(|e| e[j]).collect();
        let mean = values.iter().sum::<f64>() / runs as f64;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (runs - 1) as f64;
        let se = (var / runs as f64).sqrt();
        assert!(se > 0.0);
        assert!(
            (mean - truth).abs() < 4.5 * se,
            "coordinate {j}: ES mean {mean} vs gradient {truth} (standard error {se})"
        );
    }
    Ok(())
}

/// Training with the ES estimator alone (no autodiff) fits a MAML-style constant to a
/// quadratic family: it closes 98% of the loss gap to the best constant, which is y*(x̄) since
/// f is linear in x.
#[test]
fn es_training_fits_a_constant_without_autodiff() -> Result<()> {
    use amortize::train::GradientEstimator;
    let problem = Quadratic::new(QuadraticConfig::default())?;
    let pc = ProblemConfig::Quadratic(QuadraticConfig::default());
    let model = ModelConfig::Unrolled(UnrolledConfig {
        init: InitConfig::Constant { value: 2.0 },
        steps: 0,
        rate: RateConfig::Fixed { value: 0.1 },
        adjoint: Adjoint::Full,
        update: amortize::model::UpdateRule::Gradient,
    })
    .build(&problem, &mut StdRng::seed_from_u64(0), &Device::Cpu)?;
    let x = problem
        .sample_contexts(4096, &mut StdRng::seed_from_u64(5), &Device::Cpu)?
        .to_dtype(DType::F64)?;
    let mean_loss = |y: &Tensor| -> Result<f64> {
        let y = y
            .to_dtype(DType::F64)?
            .broadcast_as(x.dims2().map(|(n, _)| (n, 3))?)?;
        scalar(&problem.objective(&y.contiguous()?, &x)?.mean_all()?)
    };
    let theta =
        |m: &dyn Model| -> Result<Tensor> { Ok(m.forward(&x, &problem)?.y.narrow(0, 0, 1)?) };
    let before = mean_loss(&theta(model.as_ref())?)?;
    let train = TrainConfig {
        steps: 400,
        batch_size: 256,
        learning_rate: 2e-2,
        schedule: Schedule::Cosine {
            final_fraction: 0.05,
        },
        gradient: GradientEstimator::Es {
            sigma: 0.1,
            samples: 8,
        },
        eval_every: 0,
        eval_size: 64,
        ..TrainConfig::default()
    };
    Trainer::new(&problem, pc, model.as_ref(), train, 0)?.run()?;
    let after = mean_loss(&theta(model.as_ref())?)?;
    let x_bar = x.mean_keepdim(0)?;
    let best = problem.solve_exact(&x_bar)?.expect("closed form");
    let optimum = mean_loss(&best)?;
    assert!(
        after - optimum < 0.02 * (before - optimum),
        "ES training: {before} → {after}, best constant {optimum}"
    );
    Ok(())
}

/// One-dimensional Gaussian smoothing against closed forms: y² ↦ y² + σ², cos y ↦
/// e^{−σ²/2} cos y, and |y| ↦ σ√(2/π) at 0.
#[test]
fn smoothing_matches_closed_forms() {
    use amortize::train::smoothed_1d;
    for sigma in [0.5, 1.0, 2.5] {
        for y in [-2.0, 0.0, 0.7, 3.0] {
            let sq = smoothed_1d(|v| v * v, y, sigma, 4001);
            assert!((sq - (y * y + sigma * sigma)).abs() < 1e-8, "{sq}");
            let c = smoothed_1d(f64::cos, y, sigma, 4001);
            assert!((c - (-sigma * sigma / 2.0f64).exp() * y.cos()).abs() < 1e-8);
        }
        let a = smoothed_1d(f64::abs, 0.0, sigma, 4001);
        let expect = sigma * (2.0 / std::f64::consts::PI).sqrt();
        assert!((a - expect).abs() < 1e-5, "{a} vs {expect}");
    }
}

fn tiny_sinusoid() -> Result<amortize::problem::Sinusoid> {
    amortize::problem::Sinusoid::new(amortize::problem::SinusoidConfig {
        shots: 3,
        queries: 4,
        hidden: vec![4],
        ..Default::default()
    })
}

/// The sinusoid family: sizes, the batched learner against a hand-computed 1-2-1 ReLU net,
/// support MSE as the objective and query MSE as the meta-loss; the query loss is refused
/// on a family without a query part, and `init = problem` on one without a default solution.
#[test]
fn sinusoid_tasks_and_the_learner_are_right() -> Result<()> {
    use amortize::problem::{Sinusoid, SinusoidConfig};
    let p = Sinusoid::new(SinusoidConfig::default())?;
    assert_eq!((p.context_dim(), p.solution_dim()), (40, 1761));
    let small = Sinusoid::new(SinusoidConfig {
        shots: 2,
        queries: 1,
        hidden: vec![2],
        ..Default::default()
    })?;
    assert_eq!(small.solution_dim(), 7);
    // φ = [W1 (1×2), b1 (2), W2 (2×1), b2 (1)].
    let phi = Tensor::new(&[[1.0f64, -2.0, 0.5, 0.5, 3.0, 1.0, -1.0]], &Device::Cpu)?;
    let t = Tensor::new(&[[1.0f64, -1.0]], &Device::Cpu)?;
    // t = 1: h = relu([1.5, -1.5]) = [1.5, 0]; out = 3·1.5 − 1 = 3.5.
    // t = −1: h = relu([-0.5, 2.5]) = [0, 2.5]; out = 2.5 − 1 = 1.5.
    let out: Vec<f64> = small.learner(&phi, &t)?.flatten_all()?.to_vec1()?;
    assert_eq!(out, vec![3.5, 1.5]);
    // Context [t_s, y_s, t_q, y_q]: support targets (3.5, 0.5) → MSE ((0)² + (1)²)/2.
    let x = Tensor::new(&[[1.0f64, -1.0, 3.5, 0.5, 1.0, 5.5]], &Device::Cpu)?;
    let f: Vec<f64> = small.objective(&phi, &x)?.to_vec1()?;
    assert_eq!(f, vec![0.5]);
    let q: Vec<f64> = small.query_objective(&phi, &x)?.unwrap().to_vec1()?;
    assert_eq!(q, vec![4.0]);
    let pred = Prediction {
        y: phi.clone(),
        iterates: vec![],
        penalty: None,
    };
    assert_eq!(scalar(&Loss::Query.value(&pred, &x, None, &small)?)?, 4.0);
    let quad = Quadratic::new(QuadraticConfig::default())?;
    let (xq, yq) = sample_pair(&quad, 2, 1)?;
    let err = Loss::Query
        .value(
            &Prediction {
                y: yq,
                iterates: vec![],
                penalty: None,
            },
            &xq,
            None,
            &quad,
        )
        .expect_err("no query part");
    assert!(err.to_string().contains("query"), "{err}");
    let err = unrolled(
        &quad,
        UnrolledConfig {
            init: InitConfig::Problem,
            ..UnrolledConfig::default()
        },
    )
    .err()
    .expect("quadratic has no default solution");
    assert!(err.to_string().contains("default solution"), "{err}");
    // Tasks: targets are A sin(t − b) with |A| ≤ 5 and t in range.
    let x = p.sample_contexts(64, &mut StdRng::seed_from_u64(3), &Device::Cpu)?;
    let v: Vec<Vec<f32>> = x.to_vec2()?;
    assert!(v.iter().flatten().all(|a| a.abs() <= 5.0 + 1e-6));
    Ok(())
}

/// MAML's meta-gradient on sinusoid tasks (one inner step through a ReLU learner, second
/// order) matches finite differences of the post-adaptation query loss, and first-order MAML
/// differs from it.
#[test]
fn maml_meta_gradient_matches_finite_differences() -> Result<()> {
    let p = tiny_sinusoid()?;
    let x = p
        .sample_contexts(5, &mut StdRng::seed_from_u64(8), &Device::Cpu)?
        .to_dtype(DType::F64)?;
    let config = |adjoint| UnrolledConfig {
        init: InitConfig::Problem,
        steps: 2,
        rate: RateConfig::PerCoordinate { initial: 0.05 },
        adjoint,
        update: amortize::model::UpdateRule::Gradient,
    };
    let query = |m: &Unrolled| -> Result<Tensor> {
        Loss::Query.value(&m.forward_train(&x, &p)?, &x, None, &p)
    };
    let maml = unrolled(&p, config(Adjoint::Full))?;
    let vars: Vec<candle_core::Var> = maml.params().vars().cloned().collect();
    let store = query(&maml)?.backward()?;
    for var in &vars {
        let g = store.get(var.as_tensor()).unwrap().clone();
        let v0 = var.as_tensor().copy()?;
        let fd = finite_difference_grad(&v0, 1e-6, |v| {
            var.set(v)?;
            scalar(&query(&maml)?)
        })?;
        var.set(&v0)?;
        let err = max_abs_diff(&g, &fd)?;
        assert!(
            err < 1e-6,
            "MAML meta-gradient off finite differences by {err}"
        );
    }
    let fo = unrolled(&p, config(Adjoint::FirstOrder))?;
    let g_fo = query(&fo)?.backward()?;
    let g_full = store.get(vars[0].as_tensor()).unwrap();
    let fo_init = g_fo
        .get(fo.params().vars().next().unwrap().as_tensor())
        .unwrap();
    assert!(max_abs_diff(g_full, fo_init)? > 1e-6);
    Ok(())
}

/// Held-out query MSE of `model` on sinusoid tasks (learner 1-16-16-1) before and after
/// `steps` meta-steps on the query loss (meta-batch 25, Adam 3e-3).
fn query_mse_before_after(model: &UnrolledConfig, steps: usize) -> Result<(f64, f64)> {
    use amortize::problem::{Sinusoid, SinusoidConfig};
    let cfg = SinusoidConfig {
        hidden: vec![16, 16],
        ..Default::default()
    };
    let p = Sinusoid::new(cfg.clone())?;
    let model = ModelConfig::Unrolled(model.clone()).build(
        &p,
        &mut StdRng::seed_from_u64(0),
        &Device::Cpu,
    )?;
    let x = p.sample_contexts(500, &mut StdRng::seed_from_u64(9), &Device::Cpu)?;
    let query_mse = |m: &dyn Model| -> Result<f64> {
        scalar(&Loss::Query.value(&m.forward(&x, &p)?, &x, None, &p)?)
    };
    let before = query_mse(model.as_ref())?;
    let train = TrainConfig {
        steps,
        batch_size: 25,
        learning_rate: 3e-3,
        loss: Loss::Query,
        eval_every: 0,
        eval_size: 25,
        ..TrainConfig::default()
    };
    Trainer::new(&p, ProblemConfig::Sinusoid(cfg), model.as_ref(), train, 0)?.run()?;
    Ok((before, query_mse(model.as_ref())?))
}

/// A short MAML meta-training lowers the held-out post-adaptation query MSE.
#[test]
fn maml_training_lowers_the_query_loss() -> Result<()> {
    let maml = UnrolledConfig {
        init: InitConfig::Problem,
        steps: 1,
        rate: RateConfig::Fixed { value: 0.01 },
        adjoint: Adjoint::Full,
        update: amortize::model::UpdateRule::Gradient,
    };
    let (before, after) = query_mse_before_after(&maml, 200)?;
    assert!(after < 0.8 * before, "query MSE {before} → {after}");
    Ok(())
}

/// Reptile's loss has gradient θ − mean φ_K for a constant init: the Reptile direction.
#[test]
fn reptile_loss_gives_the_reptile_direction() -> Result<()> {
    let p = tiny_sinusoid()?;
    let x = p
        .sample_contexts(6, &mut StdRng::seed_from_u64(2), &Device::Cpu)?
        .to_dtype(DType::F64)?;
    let model = unrolled(
        &p,
        UnrolledConfig {
            init: InitConfig::Problem,
            steps: 3,
            rate: RateConfig::Fixed { value: 0.05 },
            adjoint: Adjoint::Full,
            update: amortize::model::UpdateRule::Gradient,
        },
    )?;
    let theta = model.params().vars().next().unwrap().clone();
    let pred = model.forward_train(&x, &p)?;
    let g = Loss::Reptile
        .value_summed(&pred, &IterateWeights::Last, &x, None, &p)?
        .backward()?
        .get(theta.as_tensor())
        .unwrap()
        .clone();
    let expect = theta.as_tensor().broadcast_sub(&pred.y.mean_keepdim(0)?)?;
    assert!(max_abs_diff(&g, &expect)? < 1e-12);
    assert!(expect.abs()?.max_all()?.to_scalar::<f64>()? > 1e-4);
    Ok(())
}

/// The HyperNet: permutation-invariant in the shots, starts at its base learner, trains on
/// the query loss to beat the untrained map, and refuses families without support sets.
#[test]
fn hypernet_is_permutation_invariant_and_learns() -> Result<()> {
    use amortize::model::{HyperNet, HyperNetConfig};
    use amortize::problem::{Sinusoid, SinusoidConfig};
    let cfg = SinusoidConfig {
        shots: 5,
        queries: 5,
        hidden: vec![8, 8],
        ..Default::default()
    };
    let p = Sinusoid::new(cfg.clone())?;
    let config = HyperNetConfig {
        encoder: vec![16, 16],
        decoder: vec![32],
        ..HyperNetConfig::default()
    };
    let net = HyperNet::new(
        config.clone(),
        &p,
        &mut StdRng::seed_from_u64(0),
        &Device::Cpu,
    )?;
    let x = p.sample_contexts(64, &mut StdRng::seed_from_u64(4), &Device::Cpu)?;
    // Reverse the order of the 5 support pairs (columns 0..5 are t, 5..10 are y).
    let order: Vec<u32> = (0..5u32)
        .rev()
        .chain((5..10u32).rev())
        .chain(10..20)
        .collect();
    let idx = Tensor::from_vec(order, 20, &Device::Cpu)?;
    let shuffled = x.index_select(&idx, 1)?;
    let a = net.forward(&x, &p)?.y;
    let b = net.forward(&shuffled, &p)?.y;
    assert!(
        max_abs_diff(&a, &b)? < 1e-5,
        "shot order changed the prediction"
    );
    let query = |m: &dyn Model| -> Result<f64> {
        scalar(&Loss::Query.value(&m.forward(&x, &p)?, &x, None, &p)?)
    };
    let before = query(&net)?;
    let train = TrainConfig {
        steps: 300,
        batch_size: 25,
        learning_rate: 3e-3,
        loss: Loss::Query,
        eval_every: 0,
        eval_size: 25,
        ..TrainConfig::default()
    };
    Trainer::new(&p, ProblemConfig::Sinusoid(cfg), &net, train, 0)?.run()?;
    let after = query(&net)?;
    assert!(after < 0.8 * before, "query MSE {before} → {after}");
    let steps = net.forward_with_steps(&x, &p, 3).unwrap()?;
    assert_eq!(steps.iterates.len(), 4);
    let q = Quadratic::new(QuadraticConfig::default())?;
    let err = HyperNet::new(config, &q, &mut StdRng::seed_from_u64(0), &Device::Cpu)
        .err()
        .expect("quadratic has no support sets");
    assert!(err.to_string().contains("support sets"), "{err}");
    Ok(())
}

/// Implicit differentiation (iMAML, eq. 14): on a strongly convex quadratic, the implicit
/// gradient of L(y*) with respect to the init θ, through y* = argmin f + λ/2‖y − θ‖² solved by
/// 400 graph-free steps, matches finite differences of the converged solution map; and the
/// training prediction carries no graph through the steps.
#[test]
fn implicit_gradient_matches_the_converged_solution_map() -> Result<()> {
    use amortize::train::implicit_gradient;
    let problem = Quadratic::new(QuadraticConfig::default())?;
    let (x, _) = sample_pair(&problem, 4, 21)?;
    let lambda = 2.0;
    let model = unrolled(
        &problem,
        UnrolledConfig {
            init: InitConfig::Constant { value: 0.5 },
            steps: 400,
            rate: RateConfig::Fixed { value: 0.05 },
            adjoint: Adjoint::Implicit {
                lambda,
                cg_iters: 50,
            },
            update: amortize::model::UpdateRule::Gradient,
        },
    )?;
    let theta = model.params().vars().next().unwrap().clone();
    let pred = model.forward_train(&x, &problem)?;
    // y* is stationary for the proximal objective.
    let stat = problem
        .gradient(&pred.y, &x)?
        .add(&pred.y.sub(&pred.iterates[0])?.affine(lambda, 0.0)?)?;
    assert!(stat.abs()?.max_all()?.to_scalar::<f64>()? < 1e-10);
    let loss_of = |y: &Tensor| Loss::Objective.value_of(y, &x, None, &problem);
    let g = amortize::autodiff::grad_at(&pred.y, |y| loss_of(y))?;
    let v = implicit_gradient(&problem, &pred.y, &x, &g, lambda, 50)?;
    let grad = pred.iterates[0]
        .mul(&v)?
        .sum_all()?
        .backward()?
        .get(theta.as_tensor())
        .unwrap()
        .clone();
    let t0 = theta.as_tensor().copy()?;
    let fd = finite_difference_grad(&t0, 1e-6, |t| {
        theta.set(t)?;
        scalar(&loss_of(&model.forward_train(&x, &problem)?.y)?)
    })?;
    theta.set(&t0)?;
    let err = max_abs_diff(&grad, &fd)?;
    assert!(
        err < 1e-6,
        "implicit gradient off finite differences by {err}"
    );
    Ok(())
}

/// iMAML trains through the trainer: a short run lowers the held-out query MSE.
#[test]
fn imaml_training_lowers_the_query_loss() -> Result<()> {
    let imaml = UnrolledConfig {
        init: InitConfig::Problem,
        steps: 10,
        rate: RateConfig::Fixed { value: 0.02 },
        adjoint: Adjoint::Implicit {
            lambda: 1.0,
            cg_iters: 5,
        },
        update: amortize::model::UpdateRule::Gradient,
    };
    let (before, after) = query_mse_before_after(&imaml, 150)?;
    assert!(after < 0.8 * before, "query MSE {before} → {after}");
    Ok(())
}

/// The sinusoid's hand-written learner gradient equals autodiff of its support MSE, and its
/// own derivative (what MAML's meta-gradient uses) matches finite differences.
#[test]
fn sinusoid_closed_form_gradient_matches_autodiff() -> Result<()> {
    let p = tiny_sinusoid()?;
    let x = p
        .sample_contexts(3, &mut StdRng::seed_from_u64(6), &Device::Cpu)?
        .to_dtype(DType::F64)?;
    let phi = p
        .default_solution(&mut StdRng::seed_from_u64(2), &Device::Cpu)?
        .unwrap()
        .to_dtype(DType::F64)?
        .broadcast_as((3, p.solution_dim()))?
        .contiguous()?;
    let closed = p.gradient(&phi, &x)?;
    let auto = amortize::autodiff::grad_at(&phi, |y| Ok(p.objective(y, &x)?.sum_all()?))?;
    let err = max_abs_diff(&closed, &auto)?;
    assert!(err < 1e-12, "closed-form gradient off autodiff by {err}");
    // d/dφ of ⟨∇f(φ), v⟩ (a Hessian-vector product through the closed form) vs differences.
    let v = Tensor::ones(phi.shape(), DType::F64, &Device::Cpu)?;
    let hvp = amortize::autodiff::grad_at(&phi, |y| Ok(p.gradient(y, &x)?.mul(&v)?.sum_all()?))?;
    let fd = finite_difference_grad(&phi, 1e-6, |y| {
        scalar(&p.gradient(y, &x)?.mul(&v)?.sum_all()?)
    })?;
    let err = max_abs_diff(&hvp, &fd)?;
    assert!(err < 1e-5, "HVP through the closed form off by {err}");
    Ok(())
}

/// The learned GRU update rule (eq. 3): untrained it is gradient descent exactly, its
/// meta-gradient matches finite differences, and training it makes K = 5 steps on the
/// quadratic family reach a lower objective than gradient descent with the same rate.
#[test]
fn gru_update_rule_starts_as_gradient_descent_and_learns() -> Result<()> {
    use amortize::model::UpdateRule;
    let problem = Quadratic::new(QuadraticConfig::default())?;
    let (x, _) = sample_pair(&problem, 4, 30)?;
    let config = |update| UnrolledConfig {
        init: InitConfig::Constant { value: 0.0 },
        steps: 3,
        rate: RateConfig::Fixed { value: 0.05 },
        adjoint: Adjoint::Full,
        update,
    };
    let gd = unrolled(&problem, config(UpdateRule::Gradient))?;
    let gru = unrolled(&problem, config(UpdateRule::Gru { hidden: 3 }))?;
    let (a, b) = (gd.forward(&x, &problem)?, gru.forward(&x, &problem)?);
    for (p, q) in a.iterates.iter().zip(&b.iterates) {
        assert!(max_abs_diff(p, q)? < 1e-15, "untrained GRU differs from GD");
    }
    for (i, (name, _)) in gru.params().iter().enumerate() {
        let (g, fd) = autodiff_and_fd(&gru, i, &x, &problem)?;
        let err = max_abs_diff(&g, &fd)?;
        assert!(
            err < 1e-6,
            "{name}: GRU meta-gradient off finite differences by {err}"
        );
    }
    // Training on fresh contexts: the learned rule beats plain GD at 5 steps.
    let pc = ProblemConfig::Quadratic(QuadraticConfig::default());
    let make = |update| {
        ModelConfig::Unrolled(UnrolledConfig {
            steps: 5,
            rate: RateConfig::Fixed { value: 0.02 },
            init: InitConfig::Constant { value: 0.0 },
            adjoint: Adjoint::Full,
            update,
        })
        .build(&problem, &mut StdRng::seed_from_u64(0), &Device::Cpu)
    };
    let learned = make(UpdateRule::Gru { hidden: 8 })?;
    let plain = make(UpdateRule::Gradient)?;
    let held = problem.sample_contexts(512, &mut StdRng::seed_from_u64(31), &Device::Cpu)?;
    let mean_f = |m: &dyn Model| -> Result<f64> {
        scalar(
            &problem
                .objective(&m.forward(&held, &problem)?.y, &held)?
                .mean_all()?,
        )
    };
    let before = mean_f(learned.as_ref())?;
    assert!((before - mean_f(plain.as_ref())?).abs() < 1e-6);
    let train = TrainConfig {
        steps: 300,
        batch_size: 64,
        learning_rate: 1e-2,
        eval_every: 0,
        eval_size: 64,
        ..TrainConfig::default()
    };
    Trainer::new(&problem, pc, learned.as_ref(), train, 0)?.run()?;
    let after = mean_f(learned.as_ref())?;
    let optimum = {
        let ys = problem.solve_exact(&held)?.unwrap();
        scalar(&problem.objective(&ys, &held)?.mean_all()?)?
    };
    assert!(
        after - optimum < 0.5 * (before - optimum),
        "GRU rule: gap {} → {} (GD)",
        after - optimum,
        before - optimum
    );
    Ok(())
}

/// The implicit adjoint's inner solver is safeguarded: even with a rate far too large for plain
/// gradient descent (which diverges on the sinusoid learner), every inner step keeps the
/// proximal objective f(φ) + λ/2‖φ − θ‖² from increasing, per task, and stays finite.
#[test]
fn imaml_inner_steps_never_increase_the_proximal_objective() -> Result<()> {
    let p = tiny_sinusoid()?;
    let lambda = 2.0;
    let model = unrolled(
        &p,
        UnrolledConfig {
            init: InitConfig::Problem,
            steps: 12,
            rate: RateConfig::Fixed { value: 5.0 },
            adjoint: Adjoint::Implicit {
                lambda,
                cg_iters: 3,
            },
            update: amortize::model::UpdateRule::Gradient,
        },
    )?;
    let x = p
        .sample_contexts(6, &mut StdRng::seed_from_u64(9), &Device::Cpu)?
        .to_dtype(DType::F64)?;
    let pred = model.forward(&x, &p)?;
    let y0 = &pred.iterates[0];
    let phi = |y: &Tensor| -> Result<Vec<f64>> {
        let prox = y.sub(y0)?.sqr()?.sum(1)?.affine(0.5 * lambda, 0.0)?;
        Ok(p.objective(y, &x)?.add(&prox)?.to_vec1()?)
    };
    let mut previous = phi(y0)?;
    let mut decreased = false;
    for y in &pred.iterates[1..] {
        let now = phi(y)?;
        for (a, b) in now.iter().zip(&previous) {
            assert!(
                a.is_finite() && *a <= *b + 1e-12 * b.abs().max(1.0),
                "φ rose from {b} to {a}"
            );
            decreased |= *a < *b - 1e-9;
        }
        previous = now;
    }
    assert!(decreased, "some step must make progress");
    // The same rate without the safeguard (plain unrolled steps) blows up.
    let plain = unrolled(
        &p,
        UnrolledConfig {
            init: InitConfig::Problem,
            steps: 12,
            rate: RateConfig::Fixed { value: 5.0 },
            adjoint: Adjoint::FirstOrder,
            update: amortize::model::UpdateRule::Gradient,
        },
    )?;
    let last: Vec<f64> = p.objective(&plain.forward(&x, &p)?.y, &x)?.to_vec1()?;
    assert!(
        last.iter().any(|v| !v.is_finite() || *v > 1e3),
        "plain steps at rate 5 should diverge: {last:?}"
    );
    Ok(())
}

/// Adam-like unrolled steps (eq. 2 with an Adam update): with a fixed rate they reproduce the
/// Adam solver's iterates from the same start, and with learned per-step rates and an MLP init
/// the meta-gradient through them matches finite differences.
#[test]
fn adam_unrolled_steps_match_the_adam_solver_and_finite_differences() -> Result<()> {
    use amortize::eval::solver_iterates;
    use amortize::model::UpdateRule;
    use amortize::solver::AdamSolver;
    let problem = Quadratic::new(QuadraticConfig::default())?;
    let (x, _) = sample_pair(&problem, 4, 8)?;
    let adam = UpdateRule::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    };
    let fixed = unrolled(
        &problem,
        UnrolledConfig {
            init: InitConfig::Constant { value: 0.3 },
            steps: 6,
            rate: RateConfig::Fixed { value: 0.05 },
            adjoint: Adjoint::Full,
            update: adam,
        },
    )?;
    let pred = fixed.forward(&x, &problem)?;
    let reference = solver_iterates(&AdamSolver::new(&problem, 0.05), &pred.iterates[0], &x, 6)?;
    for (k, (a, b)) in pred.iterates.iter().zip(&reference).enumerate() {
        let err = max_abs_diff(a, b)?;
        assert!(err < 1e-9, "iterate {k}: {err}");
    }
    let learned = unrolled(
        &problem,
        UnrolledConfig {
            init: InitConfig::Mlp(MlpConfig {
                hidden: vec![5],
                activation: amortize::model::Activation::Tanh,
                project_output: true,
            }),
            steps: 3,
            rate: RateConfig::PerStep { initial: 0.1 },
            adjoint: Adjoint::Full,
            update: adam,
        },
    )?;
    for i in 0..learned.params().len() {
        let (g, fd) = autodiff_and_fd(&learned, i, &x, &problem)?;
        let err = max_abs_diff(&g, &fd)?;
        assert!(err < 1e-5, "parameter {i}: {err}");
    }
    Ok(())
}
