use amortize::model::{shrink, shrink_selected, Lista, ListaConfig, Model, SupportRule};
use amortize::prelude::*;
use amortize::problem::{Lasso, LassoConfig};
use amortize::solver::{ProximalGradient, Solver};
use amortize::testing::max_abs_diff;
use amortize::train::{DataConfig, Layerwise, TrainConfig, Trainer};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The small family's settings without signal noise (planted codes are exact solutions of
/// x = W y).
fn small_noiseless() -> LassoConfig {
    LassoConfig {
        signal_dim: 16,
        code_dim: 32,
        noise: 0.0,
        ..LassoConfig::default()
    }
}

fn small() -> Result<Lasso> {
    Lasso::new(LassoConfig {
        signal_dim: 16,
        code_dim: 32,
        ..LassoConfig::default()
    })
}

/// `n` signals with the codes planted in them (seeded).
fn planted(p: &Lasso, n: usize, seed: u64) -> Result<(Tensor, Tensor)> {
    Ok(
        p.sample_with_solutions(n, &mut StdRng::seed_from_u64(seed), &Device::Cpu)?
            .expect("planted codes"),
    )
}

/// Mean relative objective gap (E(y) − E*)/E*.
fn mean_gap(p: &Lasso, y: &Tensor, x: &Tensor, e_star: &Tensor) -> Result<f64> {
    Ok(amortize::eval::relative_gaps(p, std::slice::from_ref(y), x, e_star)?[0])
}

/// The exact solver's answers satisfy the Lasso's optimality conditions, checked
/// independently: on the support Wᵀ(x − Wy) = α sign(y), elsewhere |Wᵀ(x − Wy)| ≤ α.
#[test]
fn lasso_exact_solutions_satisfy_the_optimality_conditions() -> Result<()> {
    let p = small()?;
    let x = p
        .sample_contexts(8, &mut StdRng::seed_from_u64(1), &Device::Cpu)?
        .to_dtype(DType::F64)?;
    let y = p.solve_exact(&x)?.expect("FISTA");
    let r = p.residual(&y, &x)?.max(0)?.to_scalar::<f64>()?;
    assert!(r < 1e-9, "residual {r}");
    let corr: Vec<Vec<f64>> = p.least_squares().gradient(&y, &x)?.neg()?.to_vec2()?;
    let ys: Vec<Vec<f64>> = y.to_vec2()?;
    let (mut on, mut off) = (0, 0);
    for (yr, cr) in ys.iter().zip(&corr) {
        for (yi, ci) in yr.iter().zip(cr) {
            if yi.abs() > 1e-9 {
                on += 1;
                assert!(
                    (ci - 0.1 * yi.signum()).abs() < 1e-8,
                    "{ci} vs α sign({yi})"
                );
            } else {
                off += 1;
                assert!(ci.abs() <= 0.1 + 1e-8, "|{ci}| > α");
            }
        }
    }
    assert!(on > 0 && off > 0, "support {on}, zeros {off}");
    // The residual is a certificate: it is far from zero at a perturbed point.
    let r = p.residual(&(y + 0.05)?, &x)?.min(0)?.to_scalar::<f64>()?;
    assert!(r > 1e-2);
    Ok(())
}

/// Bad data gets clear errors: wrong signal length, NaN, invalid settings.
#[test]
fn lasso_refuses_bad_data() -> Result<()> {
    let p = small()?;
    let wrong = Tensor::zeros((2, 15), DType::F64, &Device::Cpu)?;
    let msg = p.solve_exact(&wrong).unwrap_err().to_string();
    assert!(msg.contains("15") && msg.contains("16"), "{msg}");
    let nan = Tensor::full(f64::NAN, (1, 16), &Device::Cpu)?;
    assert!(p.solve_exact(&nan).is_err());
    let bad = Lasso::new(LassoConfig {
        alpha: -1.0,
        ..LassoConfig::default()
    });
    assert!(bad.unwrap_err().to_string().contains("alpha"));
    let mlp_config = ModelConfig::Lista(ListaConfig::default());
    let sphere = Sphere::new(SphereConfig::default())?;
    let err = mlp_config
        .build(&sphere, &mut StdRng::seed_from_u64(0), &Device::Cpu)
        .err()
        .expect("lista needs a lasso");
    assert!(err.to_string().contains("lasso"), "{err}");
    Ok(())
}

/// The shrinkage against hand-computed values, and its gradient in β.
#[test]
fn shrinkage_matches_hand_computed_values() -> Result<()> {
    let v = Tensor::new(&[[1.5f64, -0.2, -3.0, 0.4, 0.7]], &Device::Cpu)?;
    let beta = Tensor::new(&[0.5f64, 0.5, 0.5, 0.5, 1.0], &Device::Cpu)?;
    let h: Vec<f64> = shrink(&v, &beta)?.flatten_all()?.to_vec1()?;
    assert_eq!(h, vec![1.0, 0.0, -2.5, 0.0, 0.0]);
    // ∂(Σ h)/∂β = −sign(v) on the active set.
    let b = candle_core::Var::from_tensor(&beta)?;
    let g = shrink(&v, b.as_tensor())?.sum_all()?.backward()?;
    let gb: Vec<f64> = g.get(b.as_tensor()).unwrap().to_vec1()?;
    assert_eq!(gb, vec![-1.0, 0.0, 1.0, 0.0, 0.0]);
    // Support selection: the 2 largest |v| (−3.0 and 1.5) pass unthresholded.
    let hs: Vec<f64> = shrink_selected(&v, &beta, 2, SupportRule::Largest)?
        .flatten_all()?
        .to_vec1()?;
    assert_eq!(hs, vec![1.5, 0.0, -3.0, 0.0, 0.0]);
    let hs: Vec<f64> = shrink_selected(&v, &beta.affine(0.2, 0.0)?, 2, SupportRule::Largest)?
        .flatten_all()?
        .to_vec1()?;
    assert!(
        max_abs_diff(
            &Tensor::new(hs.as_slice(), &Device::Cpu)?,
            &Tensor::new(&[1.5, -0.1, -3.0, 0.3, 0.5], &Device::Cpu)?
        )? < 1e-12
    );
    // Among the 3 largest but not above its threshold, 0.7 ≤ β = 1.0 is still zeroed.
    let hs: Vec<f64> = shrink_selected(&v, &beta, 3, SupportRule::LargestAboveThreshold)?
        .flatten_all()?
        .to_vec1()?;
    assert_eq!(hs, vec![1.5, 0.0, -3.0, 0.0, 0.0]);
    // The `largest` rule lets it through unchanged.
    let hs: Vec<f64> = shrink_selected(&v, &beta, 3, SupportRule::Largest)?
        .flatten_all()?
        .to_vec1()?;
    assert_eq!(hs, vec![1.5, 0.0, -3.0, 0.0, 0.7]);
    Ok(())
}

/// LISTA initialised from ISTA reproduces ISTA's iterates exactly (f64), and its continuation
/// steps are further ISTA steps.
#[test]
fn lista_from_ista_is_ista() -> Result<()> {
    let p = small()?;
    let x = p
        .sample_contexts(5, &mut StdRng::seed_from_u64(2), &Device::Cpu)?
        .to_dtype(DType::F64)?;
    let ista = ProximalGradient::ista(p.least_squares(), p.prox(), 1.0 / p.lipschitz())?;
    // Plain and coupled (LISTA-CP) layers both start as ISTA steps.
    for coupled in [false, true] {
        let cfg = ListaConfig {
            layers: 4,
            continuation: 3,
            coupled,
            ..ListaConfig::default()
        };
        let lista = Lista::new(cfg, &p, DType::F64, &Device::Cpu)?;
        let pred = lista.forward(&x, &p)?;
        assert_eq!(pred.iterates.len(), 8);
        let mut s = ista.init(&Tensor::zeros((5, 32), DType::F64, &Device::Cpu)?, &x)?;
        for (k, it) in pred.iterates.iter().enumerate().skip(1) {
            s = ista.step(s, &x)?;
            let e = max_abs_diff(it, ista.iterate(&s))?;
            assert!(e < 1e-12, "layer {k} (coupled {coupled}): off ISTA by {e}");
        }
        assert!(max_abs_diff(&pred.y, ista.iterate(&s))? < 1e-12);
        assert_eq!(lista.params().len(), if coupled { 8 } else { 12 });
    }
    let lista = Lista::new(
        ListaConfig {
            layers: 4,
            ..ListaConfig::default()
        },
        &p,
        DType::F64,
        &Device::Cpu,
    )?;
    let pred = lista.forward(&x, &p)?;
    let mut s = ista.init(&Tensor::zeros((5, 32), DType::F64, &Device::Cpu)?, &x)?;
    for _ in 0..4 {
        s = ista.step(s, &x)?;
    }
    assert!(max_abs_diff(&pred.y, ista.iterate(&s))? < 1e-12);
    // Tied: one set of parameters.
    let tied = Lista::new(
        ListaConfig {
            layers: 4,
            tied: true,
            ..ListaConfig::default()
        },
        &p,
        DType::F32,
        &Device::Cpu,
    )?;
    assert_eq!(tied.params().len(), 3);
    assert_eq!(lista.params().len(), 12);
    Ok(())
}

/// LISTA with momentum starts from FISTA's momentum schedule, so untrained (plain or coupled)
/// it reproduces FISTA's iterates without restart exactly (f64), and trains a momentum per layer.
#[test]
fn lista_with_momentum_from_fista_is_fista() -> Result<()> {
    let p = small()?;
    let x = p
        .sample_contexts(5, &mut StdRng::seed_from_u64(3), &Device::Cpu)?
        .to_dtype(DType::F64)?;
    let fista = ProximalGradient::fista(p.least_squares(), p.prox(), 1.0 / p.lipschitz())?
        .with_restart(false);
    for coupled in [false, true] {
        let cfg = ListaConfig {
            layers: 6,
            coupled,
            momentum: true,
            ..ListaConfig::default()
        };
        let lista = Lista::new(cfg, &p, DType::F64, &Device::Cpu)?;
        let pred = lista.forward(&x, &p)?;
        let mut s = fista.init(&Tensor::zeros((5, 32), DType::F64, &Device::Cpu)?, &x)?;
        for (k, it) in pred.iterates.iter().enumerate().skip(1) {
            s = fista.step(s, &x)?;
            let e = max_abs_diff(it, fista.iterate(&s))?;
            assert!(e < 1e-12, "layer {k} (coupled {coupled}): off FISTA by {e}");
        }
        // Momentum changes the answer: FISTA-6 differs from ISTA-6 here.
        let ista = Lista::new(
            ListaConfig {
                layers: 6,
                coupled,
                ..ListaConfig::default()
            },
            &p,
            DType::F64,
            &Device::Cpu,
        )?;
        assert!(max_abs_diff(&pred.y, &ista.forward(&x, &p)?.y)? > 1e-6);
        assert_eq!(lista.params().len(), if coupled { 18 } else { 24 });
        assert_eq!(lista.layer_params(2).len(), if coupled { 3 } else { 4 });
    }
    Ok(())
}

/// A short regression training of LISTA-4 beats FISTA at 4 iterations on held-out signals.
#[test]
fn trained_lista_beats_fista_at_equal_depth() -> Result<()> {
    let p = small()?;
    let config = ProblemConfig::Lasso(p.config().clone());
    let model = ModelConfig::Lista(ListaConfig {
        layers: 4,
        ..ListaConfig::default()
    })
    .build(&p, &mut StdRng::seed_from_u64(0), &Device::Cpu)?;
    let x = p
        .sample_contexts(256, &mut StdRng::seed_from_u64(99), &Device::Cpu)?
        .to_dtype(DType::F64)?;
    let e_star = p.objective(&p.solve_exact(&x)?.unwrap(), &x)?;
    let before = mean_gap(&p, &model.forward(&x, &p)?.y, &x, &e_star)?;
    let train = TrainConfig {
        steps: 600,
        batch_size: 64,
        learning_rate: 2e-3,
        loss: Loss::Regression,
        data: DataConfig::Fixed { size: 1024 },
        eval_every: 0,
        eval_size: 64,
        checkpoint_every: 0,
        ..TrainConfig::default()
    };
    Trainer::new(&p, config, model.as_ref(), train, 0)?.run()?;
    let after = mean_gap(&p, &model.forward(&x, &p)?.y, &x, &e_star)?;
    let fista = ProximalGradient::fista(p.least_squares(), p.prox(), 1.0 / p.lipschitz())?
        .with_restart(false);
    let mut s = fista.init(&Tensor::zeros((256, 32), DType::F64, &Device::Cpu)?, &x)?;
    for _ in 0..4 {
        s = fista.step(s, &x)?;
    }
    let fista4 = mean_gap(&p, fista.iterate(&s), &x, &e_star)?;
    assert!(
        after < fista4 && after < before,
        "LISTA-4 gap {after} (untrained {before}) vs FISTA-4 {fista4}"
    );
    Ok(())
}

/// Per-iterate gaps: FISTA's fall below ISTA's, both fall towards 0, and the exact solution
/// has gap 0.
#[test]
fn per_iteration_gaps_rank_fista_above_ista() -> Result<()> {
    use amortize::eval::{relative_gaps, solver_iterates};
    let p = small()?;
    let x = p
        .sample_contexts(32, &mut StdRng::seed_from_u64(5), &Device::Cpu)?
        .to_dtype(DType::F64)?;
    let y_star = p.solve_exact(&x)?.unwrap();
    let f_star = p.objective(&y_star, &x)?;
    let y0 = Tensor::zeros((32, 32), DType::F64, &Device::Cpu)?;
    let step = 1.0 / p.lipschitz();
    let ista = solver_iterates(
        &ProximalGradient::ista(p.least_squares(), p.prox(), step)?,
        &y0,
        &x,
        40,
    )?;
    let fista = solver_iterates(
        &ProximalGradient::fista(p.least_squares(), p.prox(), step)?.with_restart(false),
        &y0,
        &x,
        40,
    )?;
    let gi = relative_gaps(&p, &ista, &x, &f_star)?;
    let gf = relative_gaps(&p, &fista, &x, &f_star)?;
    assert_eq!((gi.len(), gf.len()), (41, 41));
    assert!(
        gf[40] < gi[40] && gi[40] < gi[1] && gi[40] >= 0.0,
        "{gi:?} {gf:?}"
    );
    let exact = relative_gaps(&p, &[y_star], &x, &f_star)?;
    assert!(exact[0].abs() < 1e-12);
    assert!(solver_iterates(
        &ProximalGradient::ista(p.least_squares(), p.prox(), step)?,
        &y0.narrow(0, 0, 3)?,
        &x,
        2
    )
    .is_err());
    Ok(())
}

/// The sparse-recovery generator: its signals have the requested SNR, its codes the requested
/// density, and NMSE matches hand-computed values.
#[test]
fn sparse_recovery_signals_have_the_requested_snr_and_nmse_is_right() -> Result<()> {
    use amortize::eval::nmse_db;
    let mut cfg = LassoConfig::sparse_recovery();
    assert_eq!((cfg.signal_dim, cfg.code_dim, cfg.noise), (256, 512, 0.0));
    cfg.snr_db = Some(20.0);
    let p = Lasso::new(cfg)?;
    let (x, codes) = planted(&p, 400, 6)?;
    let (x, codes) = (x.to_dtype(DType::F64)?, codes.to_dtype(DType::F64)?);
    let clean = codes.matmul(&p.dictionary().t()?)?;
    let noise: f64 = x.sub(&clean)?.sqr()?.sum_all()?.to_scalar()?;
    let signal: f64 = clean.sqr()?.sum_all()?.to_scalar()?;
    let snr = 10.0 * (signal / noise).log10();
    assert!((snr - 20.0).abs() < 0.3, "SNR {snr} dB");
    let density: f64 = codes
        .ne(0.0)?
        .to_dtype(DType::F64)?
        .mean_all()?
        .to_scalar()?;
    assert!((density - 0.1).abs() < 0.01, "density {density}");
    // Noiseless by default.
    let p0 = Lasso::new(LassoConfig::sparse_recovery())?;
    let (x0, c0) = planted(&p0, 4, 7)?;
    let resid = max_abs_diff(
        &x0,
        &c0.matmul(&p0.dictionary().to_dtype(DType::F32)?.t()?)?,
    )?;
    assert!(resid < 1e-5);
    assert!((nmse_db(&codes.zeros_like()?, &codes)? - 0.0).abs() < 1e-12);
    assert!((nmse_db(&codes.affine(0.9, 0.0)?, &codes)? + 20.0).abs() < 1e-9);
    assert!(nmse_db(&codes, &codes)?.is_infinite());
    assert!(nmse_db(&codes, &codes.zeros_like()?).is_err());
    Ok(())
}

/// The analytic weight has diag(W̃ᵀW) = 1 and a smaller ‖W̃ᵀW‖_F than W itself (which is
/// feasible, its columns having unit norm).
#[test]
fn analytic_weight_is_feasible_and_better_than_the_dictionary() -> Result<()> {
    use amortize::model::analytic_weight;
    let p = small()?;
    let w = p.dictionary();
    let (m, n) = w.dims2()?;
    let wt = analytic_weight(&w.flatten_all()?.to_vec1()?, m, n)?;
    let wt = Tensor::from_vec(wt, (m, n), &Device::Cpu)?;
    let gram = wt.t()?.matmul(w)?;
    let diag: Vec<f64> = (0..n)
        .map(|i| gram.get(i)?.get(i)?.to_scalar::<f64>())
        .collect::<candle_core::Result<_>>()?;
    assert!(diag.iter().all(|d| (d - 1.0).abs() < 1e-9), "{diag:?}");
    let f_tilde: f64 = gram.sqr()?.sum_all()?.to_scalar()?;
    let f_w: f64 = w.t()?.matmul(w)?.sqr()?.sum_all()?.to_scalar()?;
    assert!(f_tilde < f_w, "{f_tilde} vs {f_w}");
    Ok(())
}

/// ALISTA (2 numbers per layer) trained on the planted codes of a small noiseless
/// sparse-recovery family improves its NMSE by several dB; `data = generated` on a family
/// without planted solutions is refused.
#[test]
fn alista_learns_from_planted_codes() -> Result<()> {
    use amortize::eval::nmse_db;
    use amortize::model::AlistaConfig;
    let cfg = small_noiseless();
    let p = Lasso::new(cfg.clone())?;
    let model = ModelConfig::Alista(AlistaConfig {
        layers: 6,
        ..AlistaConfig::default()
    })
    .build(&p, &mut StdRng::seed_from_u64(0), &Device::Cpu)?;
    assert_eq!(model.params().numel(), 12);
    let (x, codes) = planted(&p, 512, 8)?;
    let before = nmse_db(&model.forward(&x, &p)?.y, &codes)?;
    let train = TrainConfig {
        steps: 300,
        batch_size: 64,
        learning_rate: 1e-2,
        loss: Loss::Regression,
        data: DataConfig::Generated,
        eval_every: 0,
        eval_size: 64,
        checkpoint_every: 0,
        ..TrainConfig::default()
    };
    Trainer::new(
        &p,
        ProblemConfig::Lasso(cfg),
        model.as_ref(),
        train.clone(),
        0,
    )?
    .run()?;
    let after = nmse_db(&model.forward(&x, &p)?.y, &codes)?;
    assert!(after < before - 3.0, "NMSE {before:.2} dB → {after:.2} dB");
    let q = Quadratic::new(QuadraticConfig::default())?;
    let mlp = ModelConfig::default().build(&q, &mut StdRng::seed_from_u64(0), &Device::Cpu)?;
    let err = Trainer::new(
        &q,
        ProblemConfig::Quadratic(QuadraticConfig::default()),
        mlp.as_ref(),
        train,
        0,
    )?
    .run()
    .expect_err("no planted solutions");
    assert!(err.to_string().contains("generated"), "{err}");
    Ok(())
}

/// ALISTA with momentum: 3 numbers per layer, βₖ = 0 at the start so the untrained model is
/// plain ALISTA exactly, and with β₁ set by hand its second layer extrapolates
/// z = ŷ¹ + β₁(ŷ¹ − ŷ⁰) before the gradient step, checked against the formula; the same for
/// residual-scaled (adaptive) thresholds.
#[test]
fn alista_momentum_starts_as_alista_and_extrapolates() -> Result<()> {
    use amortize::model::{Alista, AlistaConfig};
    let cfg = small_noiseless();
    let p = Lasso::new(cfg)?;
    let build = |momentum, adaptive_threshold| {
        let config = AlistaConfig {
            layers: 3,
            momentum,
            adaptive_threshold,
            ..AlistaConfig::default()
        };
        Alista::new(config, &p, candle_core::DType::F64, &Device::Cpu)
    };
    let (plain, heavy) = (build(false, false)?, build(true, false)?);
    assert_eq!(heavy.params().numel(), 9);
    let (x, _) = planted(&p, 8, 3)?;
    let a = plain.forward(&x, &p)?;
    assert!(max_abs_diff(&a.y, &heavy.forward(&x, &p)?.y)? == 0.0);
    // β₁ = 0.5 by hand; layer 2 against the formula from layer 1's output (support selection
    // keeps ⌊2.4% · 32⌋ = 0 entries there, so the shrinkage is plain).
    let vars = heavy.layer_params(1);
    vars[2].set(&Tensor::full(0.5f64, 1, &Device::Cpu)?)?;
    let b = heavy.forward(&x, &p)?;
    let (y0, y1) = (&b.iterates[0], &b.iterates[1]);
    assert!(max_abs_diff(y1, &a.iterates[1])? == 0.0);
    let z = y1.add(&y1.sub(y0)?.affine(0.5, 0.0)?)?;
    let w = p.dictionary().to_dtype(candle_core::DType::F64)?;
    let r = z
        .matmul(&w.t()?)?
        .sub(&x.to_dtype(candle_core::DType::F64)?)?;
    let v = z.sub(
        &r.matmul(heavy.analytic())?
            .broadcast_mul(vars[0].as_tensor())?,
    )?;
    let expected = shrink(&v, vars[1].as_tensor())?;
    assert!(max_abs_diff(&b.iterates[2], &expected)? < 1e-12);
    assert!(max_abs_diff(&b.iterates[2], &a.iterates[2])? > 1e-4);

    // Adaptive thresholds: layer 1 sees r = −x, so it is unchanged; layer 2 shrinks instance i
    // by θ₂‖x_i − W ŷ¹_i‖/‖x_i‖.
    let adaptive = build(false, true)?;
    let c = adaptive.forward(&x, &p)?;
    assert!(max_abs_diff(&c.iterates[1], &a.iterates[1])? < 1e-12);
    let y1 = &c.iterates[1];
    let vars = adaptive.layer_params(1);
    let x64 = x.to_dtype(candle_core::DType::F64)?;
    let r = y1.matmul(&w.t()?)?.sub(&x64)?;
    let v = y1.sub(
        &r.matmul(adaptive.analytic())?
            .broadcast_mul(vars[0].as_tensor())?,
    )?;
    let relative = r
        .sqr()?
        .sum_keepdim(1)?
        .sqrt()?
        .broadcast_div(&x64.sqr()?.sum_keepdim(1)?.sqrt()?)?;
    let expected = shrink(&v, &relative.broadcast_mul(vars[1].as_tensor())?)?;
    assert!(max_abs_diff(&c.iterates[2], &expected)? < 1e-12);
    assert!(max_abs_diff(&c.iterates[2], &a.iterates[2])? > 1e-6);
    Ok(())
}

/// Digits signals: unit-norm centred 8×8 images, a learned dictionary that codes them better
/// than the random one it started from, no planted codes, and signal_dim 64 enforced.
#[test]
fn digits_signals_get_a_learned_dictionary() -> Result<()> {
    use amortize::problem::Signals;
    let cfg = |iterations| LassoConfig {
        signal_dim: 64,
        code_dim: 48,
        signals: Signals::Digits,
        dictionary_iterations: iterations,
        ..LassoConfig::default()
    };
    let learned = Lasso::new(cfg(3))?;
    let start = Lasso::new(cfg(0))?;
    let x = learned
        .sample_contexts(64, &mut StdRng::seed_from_u64(1), &Device::Cpu)?
        .to_dtype(DType::F64)?;
    let norms: Vec<f64> = x.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5));
    let mean = |p: &Lasso| -> Result<f64> {
        let y = p.solve_exact(&x)?.unwrap();
        Ok(p.objective(&y, &x)?.mean_all()?.to_scalar()?)
    };
    let (e_learned, e_start) = (mean(&learned)?, mean(&start)?);
    assert!(
        e_learned < e_start,
        "learned {e_learned} vs initial {e_start}"
    );
    assert!(learned
        .sample_with_solutions(2, &mut StdRng::seed_from_u64(0), &Device::Cpu)?
        .is_none());
    let err = Lasso::new(LassoConfig {
        signal_dim: 32,
        ..cfg(1)
    })
    .unwrap_err();
    assert!(err.to_string().contains("signal_dim must be 64"), "{err}");
    Ok(())
}

/// Digits: training and held-out draws come from disjoint images.
#[test]
fn digits_held_out_images_are_never_trained_on() -> Result<()> {
    use amortize::problem::Signals;
    let p = Lasso::new(LassoConfig {
        signal_dim: 64,
        code_dim: 32,
        signals: Signals::Digits,
        dictionary_iterations: 1,
        ..LassoConfig::default()
    })?;
    let rows = |t: Tensor| -> Result<Vec<Vec<u32>>> {
        let v: Vec<Vec<f32>> = t.to_vec2()?;
        Ok(v.into_iter()
            .map(|r| r.iter().map(|x| x.to_bits()).collect())
            .collect())
    };
    let train = rows(p.sample_contexts(2000, &mut StdRng::seed_from_u64(1), &Device::Cpu)?)?;
    let held = rows(p.sample_held_out(300, &mut StdRng::seed_from_u64(2), &Device::Cpu)?)?;
    let train: std::collections::HashSet<_> = train.into_iter().collect();
    assert!(
        train.len() > 1000,
        "{} distinct training images",
        train.len()
    );
    assert!(
        held.iter().all(|r| !train.contains(r)),
        "a held-out image was drawn for training"
    );
    Ok(())
}

/// Layer-wise training: stage t of K moves only layers 1 … t (later layers have no gradient
/// and keep their ISTA initialisation), every layer has moved by the end, and a model without
/// layers is refused with a message naming the model.
#[test]
fn layerwise_training_moves_one_more_layer_per_stage() -> Result<()> {
    use std::cell::RefCell;
    let p = small()?;
    let model = ModelConfig::Lista(ListaConfig {
        layers: 3,
        ..ListaConfig::default()
    })
    .build(&p, &mut StdRng::seed_from_u64(0), &Device::Cpu)?;
    let initial: Vec<Tensor> = model
        .params()
        .vars()
        .map(|v| v.as_tensor().copy())
        .collect::<candle_core::Result<_>>()?;
    let names: Vec<String> = model.params().iter().map(|(n, _)| n.to_owned()).collect();
    let moved = RefCell::new(Vec::new());
    let train = TrainConfig {
        steps: 6,
        batch_size: 32,
        learning_rate: 1e-2,
        layerwise: Some(Layerwise {
            new_layer_fraction: 0.5,
            fine_tune: vec![0.2],
            ..Layerwise::default()
        }),
        eval_every: 0,
        eval_size: 32,
        ..TrainConfig::default()
    };
    Trainer::new(
        &p,
        ProblemConfig::Lasso(p.config().clone()),
        model.as_ref(),
        train.clone(),
        0,
    )?
    .snapshot_every(1, |step, m| {
        let changed: Vec<String> = m
            .params()
            .vars()
            .zip(&initial)
            .zip(&names)
            .filter(|((v, init), _)| max_abs_diff(v.as_tensor(), init).unwrap() > 0.0)
            .map(|(_, n)| n.split('.').next().unwrap().to_owned())
            .collect();
        // The sums of each parameter tensor, to see which moved between snapshots.
        let sums: Vec<f32> = m
            .params()
            .vars()
            .map(|v| v.as_tensor().sum_all().unwrap().to_scalar::<f32>().unwrap())
            .collect();
        moved.borrow_mut().push((step, changed, sums));
    })
    .run()?;
    let moved = moved.into_inner();
    let layers_moved = |i: usize| {
        let mut l = moved[i].1.clone();
        l.dedup();
        l
    };
    // Steps 1–2: stage 1; step 3: layer 2 alone; step 4: layers 1–2; steps 5–6: stage 3.
    assert_eq!(moved.len(), 6, "{moved:?}");
    assert_eq!(layers_moved(1), ["layer0"], "{moved:?}");
    assert_eq!(layers_moved(2), ["layer0", "layer1"], "{moved:?}");
    assert_eq!(layers_moved(5), ["layer0", "layer1", "layer2"], "{moved:?}");
    // The new-layer phase leaves the earlier layers as they were.
    let before_new: Vec<f32> = moved[1].2.clone();
    assert_eq!(
        moved[2].2[..3],
        before_new[..3],
        "layer 1 moved while layer 2 trained alone"
    );
    assert_ne!(
        moved[3].2[..3],
        moved[2].2[..3],
        "layer 1 did not fine-tune"
    );

    let mlp = ModelConfig::default().build(&p, &mut StdRng::seed_from_u64(0), &Device::Cpu)?;
    let err = Trainer::new(
        &p,
        ProblemConfig::Lasso(p.config().clone()),
        mlp.as_ref(),
        train,
        0,
    )?
    .run()
    .expect_err("an MLP has no layers to stage");
    assert!(err.to_string().contains("'mlp'"), "{err}");
    Ok(())
}

/// L_Σ (eq. 13): uniform and linear weights equal the hand-weighted sum of the per-iterate
/// losses, `last` is the final loss, and custom weights of the wrong length are refused.
#[test]
fn iterate_summed_loss_weights_the_iterates() -> Result<()> {
    use amortize::loss::IterateWeights;
    let p = small()?;
    let model = ModelConfig::Lista(ListaConfig {
        layers: 4,
        ..ListaConfig::default()
    })
    .build(&p, &mut StdRng::seed_from_u64(0), &Device::Cpu)?;
    let (x, codes) = planted(&p, 16, 3)?;
    let pred = model.forward(&x, &p)?;
    assert_eq!(pred.iterates.len(), 5);
    let scalar = |t: Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar()?) };
    for loss in [Loss::Objective, Loss::Regression] {
        let each: Vec<f64> = pred.iterates[1..]
            .iter()
            .map(|y| scalar(loss.value_of(y, &x, Some(&codes), &p)?))
            .collect::<Result<_>>()?;
        let sum = |w: &IterateWeights| -> Result<f64> {
            scalar(loss.value_summed(&pred, w, &x, Some(&codes), &p)?)
        };
        let uniform = each.iter().sum::<f64>() / 4.0;
        let linear = (each[0] + 2.0 * each[1] + 3.0 * each[2] + 4.0 * each[3]) / 10.0;
        assert!((sum(&IterateWeights::Uniform)? - uniform).abs() < 1e-5 * uniform);
        assert!((sum(&IterateWeights::Linear)? - linear).abs() < 1e-5 * linear);
        assert!((sum(&IterateWeights::Last)? - each[3]).abs() < 1e-6 * each[3]);
        let custom = IterateWeights::Custom {
            weights: vec![0.0, 1.0, 0.0, 2.0],
        };
        let expect = each[1] + 2.0 * each[3];
        assert!((sum(&custom)? - expect).abs() < 1e-5 * expect);
    }
    let short = IterateWeights::Custom {
        weights: vec![1.0, 1.0],
    };
    let err = Loss::Objective
        .value_summed(&pred, &short, &x, None, &p)
        .expect_err("2 weights for 4 iterates");
    assert!(err.to_string().contains("2 custom weights"), "{err}");
    Ok(())
}

/// LISTA started from an ALISTA (`Model::init_from`) computes exactly what the ALISTA computes,
/// per layer, for untied, coupled, support-selecting and momentum variants, once the ALISTA's
/// numbers are moved off their shared start (so a mix-up of layers would show); and the
/// combinations LISTA cannot represent are refused with a message naming the reason.
#[test]
fn lista_started_from_alista_reproduces_it() -> Result<()> {
    use amortize::model::{Alista, AlistaConfig};
    let p = Lasso::new(small_noiseless())?;
    let f64_ = candle_core::DType::F64;
    let (x, _) = planted(&p, 16, 5)?;
    for (coupled, support_step, momentum) in [
        (false, 0.0, false),
        (true, 0.0, false),
        (false, 4.0, false),
        (false, 0.0, true),
        (true, 4.0, true),
    ] {
        let acfg = AlistaConfig {
            layers: 4,
            support_step,
            support_max: if support_step > 0.0 { 13.0 } else { 0.0 },
            momentum,
            ..AlistaConfig::default()
        };
        let alista = Alista::new(acfg, &p, f64_, &Device::Cpu)?;
        for k in 0..4 {
            for (j, v) in alista.layer_params(k).iter().enumerate() {
                let scale = 1.0 + 0.1 * k as f64 - 0.05 * j as f64;
                v.set(&v.as_tensor().affine(scale, 0.02 * (k + j) as f64)?)?;
            }
        }
        let lcfg = ListaConfig {
            layers: 4,
            coupled,
            support_step,
            support_max: if support_step > 0.0 { 13.0 } else { 0.0 },
            momentum,
            ..ListaConfig::default()
        };
        let lista = Lista::new(lcfg, &p, f64_, &Device::Cpu)?;
        let before = lista.forward(&x, &p)?;
        lista.init_from(&alista)?;
        let (a, l) = (alista.forward(&x, &p)?, lista.forward(&x, &p)?);
        for k in 1..=4 {
            let d = max_abs_diff(&a.iterates[k], &l.iterates[k])?;
            assert!(
                d < 1e-10,
                "{coupled} {support_step} {momentum}: layer {k} differs by {d}"
            );
        }
        assert!(
            max_abs_diff(&before.y, &l.y)? > 1e-3,
            "the start must change the model"
        );
    }
    // Refusals: adaptive thresholds, momentum on one side only, another depth, tied layers,
    // another support selection; and a mismatched dictionary.
    let base = AlistaConfig {
        layers: 4,
        support_max: 0.0,
        ..AlistaConfig::default()
    };
    let untied4 = || {
        Lista::new(
            ListaConfig {
                layers: 4,
                ..ListaConfig::default()
            },
            &p,
            f64_,
            &Device::Cpu,
        )
    };
    let lista = untied4()?;
    let cases: [(AlistaConfig, &str); 4] = [
        (
            AlistaConfig {
                adaptive_threshold: true,
                ..base.clone()
            },
            "adaptive thresholds",
        ),
        (
            AlistaConfig {
                momentum: true,
                ..base.clone()
            },
            "momentum",
        ),
        (
            AlistaConfig {
                layers: 3,
                ..base.clone()
            },
            "3 layers",
        ),
        (
            AlistaConfig {
                support_max: 13.0,
                ..base.clone()
            },
            "support selection differs",
        ),
    ];
    for (acfg, needle) in cases {
        let alista = Alista::new(acfg, &p, f64_, &Device::Cpu)?;
        let err = lista.init_from(&alista).unwrap_err().to_string();
        assert!(err.contains(needle), "expected '{needle}' in: {err}");
    }
    let tied = Lista::new(
        ListaConfig {
            layers: 4,
            tied: true,
            ..ListaConfig::default()
        },
        &p,
        f64_,
        &Device::Cpu,
    )?;
    let alista = Alista::new(base.clone(), &p, f64_, &Device::Cpu)?;
    let err = tied.init_from(&alista).unwrap_err().to_string();
    assert!(err.contains("tied"), "{err}");
    let other = Lasso::new(LassoConfig {
        dictionary_seed: 9,
        ..small_noiseless()
    })?;
    let foreign = Alista::new(base, &other, f64_, &Device::Cpu)?;
    let err = lista.init_from(&foreign).unwrap_err().to_string();
    assert!(err.contains("dictionary differs"), "{err}");
    // From a LISTA of another configuration: refused; of the same: θ copied.
    let err = lista.init_from(&tied).unwrap_err().to_string();
    assert!(err.contains("another configuration"), "{err}");
    let twin = untied4()?;
    twin.init_from(&alista)?;
    lista.init_from(&twin)?;
    assert!(max_abs_diff(&lista.forward(&x, &p)?.y, &twin.forward(&x, &p)?.y)? == 0.0);
    Ok(())
}
