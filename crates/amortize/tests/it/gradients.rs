use amortize::autodiff::{grad_at, second_order_requested};
use amortize::prelude::*;
use amortize::testing::{finite_difference_grad, max_abs_diff, problem_zoo, sample_pair};
use candle_core::Var;

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.sum_all()?.to_scalar()?)
}

#[test]
fn closed_form_gradients_match_autodiff_and_finite_differences() -> Result<()> {
    for config in problem_zoo() {
        let problem = config.build()?;
        let (x, y) = sample_pair(problem.as_ref(), 6, 11)?;
        let closed = problem.gradient(&y, &x)?;
        let auto = grad_at(&y, |y| Ok(problem.objective(y, &x)?.sum_all()?))?;
        let fd = finite_difference_grad(&y, 1e-6, |y| scalar(&problem.objective(y, &x)?))?;
        let e1 = max_abs_diff(&closed, &auto)?;
        let e2 = max_abs_diff(&closed, &fd)?;
        assert!(
            e1 < 1e-9,
            "{}: closed form vs autodiff differ by {e1}",
            config.name()
        );
        assert!(
            e2 < 1e-6,
            "{}: closed form vs finite differences differ by {e2}",
            config.name()
        );
    }
    Ok(())
}

#[test]
fn domain_gradients_match_finite_differences() -> Result<()> {
    for config in problem_zoo() {
        let problem = config.build()?;
        let (x, y) = sample_pair(problem.as_ref(), 5, 3)?;
        // Off the domain too: scale points so the map π_Y matters.
        let y = (y * 1.7)?;
        let g = problem.domain_gradient(&y, &x)?;
        let fd = finite_difference_grad(&y, 1e-6, |y| {
            scalar(&problem.objective(&problem.to_domain(y)?, &x)?)
        })?;
        let e = max_abs_diff(&g, &fd)?;
        assert!(e < 1e-6, "{}: domain gradient off by {e}", config.name());
    }
    Ok(())
}

#[test]
fn sphere_scalar_gradient_matches_tensor_gradient() -> Result<()> {
    let sphere = Sphere::new(SphereConfig::default())?;
    let (x, y) = sample_pair(&sphere, 4, 5)?;
    let g = sphere.gradient(&y, &x)?;
    let xs: Vec<Vec<f64>> = x.to_vec2()?;
    let ys: Vec<Vec<f64>> = y.to_vec2()?;
    let gs: Vec<Vec<f64>> = g.to_vec2()?;
    let fs: Vec<f64> = sphere.objective(&y, &x)?.to_vec1()?;
    for i in 0..4 {
        let (v, gi) = sphere.point_value_and_grad([ys[i][0], ys[i][1], ys[i][2]], &xs[i]);
        assert!((v - fs[i]).abs() < 1e-12);
        for k in 0..3 {
            assert!((gi[k] - gs[i][k]).abs() < 1e-9, "{gi:?} vs {:?}", gs[i]);
        }
    }
    Ok(())
}

/// d/dθ f(ŷθ(x) − α ∇_y f(ŷθ(x); x)): the meta-gradient of one unrolled gradient step, which
/// needs the gradient ∇_y f to stay differentiable (second-order autodiff).
#[test]
fn second_order_meta_gradient_matches_finite_differences() -> Result<()> {
    assert!(
        second_order_requested(),
        "CANDLE_GRAD_DO_NOT_DETACH must be set for tests (.cargo/config.toml)"
    );
    let problem = Sphere::new(SphereConfig::default())?;
    let (x, _) = sample_pair(&problem, 3, 7)?;
    let alpha = 0.3;
    // θ: a linear model ŷθ(x) = π(x W) with W (16, 3).
    let w0: Vec<f64> = (0..48)
        .map(|i| ((i * 37 % 17) as f64 - 8.0) / 10.0)
        .collect();
    let loss_of = |w: &Tensor| -> Result<Tensor> {
        let y = problem.to_domain(&x.matmul(w)?)?;
        // ∇_y f through autodiff (not the closed form), so the test exercises candle's
        // second-order path.
        let g = grad_at(&y, |y| Ok(problem.objective(y, &x)?.sum_all()?))?;
        let y1 = problem.to_domain(&(y - (g * alpha)?)?)?;
        Ok(problem.objective(&y1, &x)?.sum_all()?)
    };
    let w = Var::from_tensor(&Tensor::from_vec(w0.clone(), (16, 3), &Device::Cpu)?)?;
    let grads = loss_of(w.as_tensor())?.backward()?;
    let g = grads.get(w.as_tensor()).expect("gradient of W").clone();
    let fd = finite_difference_grad(w.as_tensor(), 1e-6, |w| scalar(&loss_of(w)?))?;
    let err = max_abs_diff(&g, &fd)?;
    let scale = fd.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    assert!(scale > 1e-3, "the test must have a non-trivial gradient");
    assert!(err < 1e-6, "meta-gradient off by {err} (scale {scale})");

    // The same through the closed-form gradient, which unrolled models use.
    let closed = |w: &Tensor| -> Result<Tensor> {
        let y = problem.to_domain(&x.matmul(w)?)?;
        let g = problem.gradient(&y, &x)?;
        let y1 = problem.to_domain(&(y - (g * alpha)?)?)?;
        Ok(problem.objective(&y1, &x)?.sum_all()?)
    };
    let w3 = Var::from_tensor(&Tensor::from_vec(w0.clone(), (16, 3), &Device::Cpu)?)?;
    let g3 = closed(w3.as_tensor())?
        .backward()?
        .get(w3.as_tensor())
        .unwrap()
        .clone();
    let err = max_abs_diff(&g3, &fd)?;
    assert!(
        err < 1e-6,
        "meta-gradient through the closed form off by {err}"
    );

    // Detaching ∇_y f gives a different (first-order) answer, so the check above is not vacuous.
    let first_order = |w: &Tensor| -> Result<Tensor> {
        let y = problem.to_domain(&x.matmul(w)?)?;
        let g = problem.gradient(&y, &x)?.detach();
        let y1 = problem.to_domain(&(y - (g * alpha)?)?)?;
        Ok(problem.objective(&y1, &x)?.sum_all()?)
    };
    let w2 = Var::from_tensor(&Tensor::from_vec(w0, (16, 3), &Device::Cpu)?)?;
    let g1 = first_order(w2.as_tensor())?
        .backward()?
        .get(w2.as_tensor())
        .unwrap()
        .clone();
    assert!(max_abs_diff(&g1, &fd)? > 1e-4);
    Ok(())
}

#[test]
fn mlp_parameter_gradient_matches_finite_differences() -> Result<()> {
    let problem = Sphere::new(SphereConfig::default())?;
    let (x, _) = sample_pair(&problem, 4, 9)?;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
    let mlp = Mlp::new(
        MlpConfig {
            hidden: vec![8],
            activation: amortize::model::Activation::Tanh,
            project_output: true,
        },
        16,
        3,
        &mut rng,
        &Device::Cpu,
    )?
    .to_dtype(DType::F64)?;
    let loss = Loss::Objective.value(&mlp.forward(&x, &problem)?, &x, None, &problem)?;
    let grads = loss.backward()?;
    let (w_var, _) = &mlp.layers()[0];
    let g = grads.get(w_var.as_tensor()).unwrap().clone();
    let w0 = w_var.as_tensor().copy()?;
    let fd = finite_difference_grad(&w0, 1e-6, |w| {
        w_var.set(w)?;
        scalar(&Loss::Objective.value(&mlp.forward(&x, &problem)?, &x, None, &problem)?)
    })?;
    w_var.set(&w0)?;
    let err = max_abs_diff(&g, &fd)?;
    assert!(err < 1e-6, "MLP weight gradient off by {err}");
    Ok(())
}
