use amortize::prelude::*;
use amortize::testing::{max_abs_diff, ScratchDir};
use amortize::train::{Observer, Record};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn tmpdir(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("test-{name}")).unwrap()
}

/// The default MLP with these hidden widths for `problem`, θ drawn from `seed`.
fn model_for(problem: &dyn Problem, hidden: &[usize], seed: u64) -> Result<Box<dyn Model>> {
    ModelConfig::Mlp(MlpConfig {
        hidden: hidden.to_vec(),
        ..Default::default()
    })
    .build(problem, &mut StdRng::seed_from_u64(seed), &Device::Cpu)
}

struct Collect<'a>(&'a mut Vec<Record>);
impl Observer for Collect<'_> {
    fn observe(&mut self, r: &Record) -> Result<()> {
        self.0.push(r.clone());
        Ok(())
    }
}

fn mean_objective(problem: &dyn Problem, model: &dyn Model, seed: u64) -> Result<f64> {
    let x = problem.sample_contexts(512, &mut StdRng::seed_from_u64(seed), &Device::Cpu)?;
    let y = model.forward(&x, problem)?.y;
    Ok(problem.objective(&y, &x)?.mean_all()?.to_scalar::<f32>()? as f64)
}

/// On every built-in family, a short run lowers the held-out objective.
#[test]
fn training_lowers_the_objective_on_each_builtin() -> Result<()> {
    for (config, loss, steps) in [
        (
            ProblemConfig::Sphere(SphereConfig::default()),
            Loss::Objective,
            150,
        ),
        (
            ProblemConfig::Toy1d(Toy1dConfig::default()),
            Loss::Regression,
            300,
        ),
        (
            ProblemConfig::Quadratic(QuadraticConfig::default()),
            Loss::Objective,
            150,
        ),
    ] {
        let problem = config.build()?;
        let model = model_for(problem.as_ref(), &[32, 32], 0)?;
        let before = mean_objective(problem.as_ref(), model.as_ref(), 99)?;
        let train = TrainConfig {
            steps,
            batch_size: 64,
            learning_rate: 3e-3,
            loss,
            eval_every: 0,
            eval_size: 64,
            ..Default::default()
        };
        Trainer::new(problem.as_ref(), config.clone(), model.as_ref(), train, 0)?.run()?;
        let after = mean_objective(problem.as_ref(), model.as_ref(), 99)?;
        assert!(
            after < before - 1e-3,
            "{}: {before} -> {after}",
            config.name()
        );
    }
    Ok(())
}

/// A tiny MLP on the quadratic family must beat the zero predictor.
#[test]
fn mlp_beats_the_zero_predictor_on_quadratic() -> Result<()> {
    let config = ProblemConfig::Quadratic(QuadraticConfig::default());
    let problem = config.build()?;
    let model = model_for(problem.as_ref(), &[32], 0)?;
    let train = TrainConfig {
        steps: 400,
        batch_size: 64,
        learning_rate: 5e-3,
        loss: Loss::Mix {
            objective: 1.0,
            regression: 1.0,
        },
        data: DataConfig::Fixed { size: 512 },
        schedule: Schedule::Cosine {
            final_fraction: 0.1,
        },
        clip_grad_norm: Some(10.0),
        eval_every: 100,
        eval_size: 64,
        ..Default::default()
    };
    let mut records = Vec::new();
    Trainer::new(problem.as_ref(), config, model.as_ref(), train, 0)?
        .observe(Collect(&mut records))
        .run()?;
    let x = problem.sample_contexts(256, &mut StdRng::seed_from_u64(5), &Device::Cpu)?;
    let f_model = problem
        .objective(&model.forward(&x, problem.as_ref())?.y, &x)?
        .mean_all()?
        .to_scalar::<f32>()?;
    let f_zero = problem
        .objective(&x.zeros_like()?.narrow(1, 0, 3)?, &x)?
        .mean_all()?
        .to_scalar::<f32>()?;
    let f_star = problem
        .objective(&problem.solve_exact(&x)?.unwrap(), &x)?
        .mean_all()?
        .to_scalar::<f32>()?;
    assert!(
        f_model < f_zero + 0.5 * (f_star - f_zero),
        "model {f_model}, zero {f_zero}, optimum {f_star}"
    );
    assert_eq!(records.iter().filter(|r| r.phase == "train").count(), 400);
    assert_eq!(records.iter().filter(|r| r.phase == "eval").count(), 4);
    assert!(records
        .iter()
        .all(|r| r.phase != "train" || r.get("loss").unwrap().is_finite()));
    Ok(())
}

#[test]
fn same_seed_same_training() -> Result<()> {
    let config = ProblemConfig::Sphere(SphereConfig::default());
    let problem = config.build()?;
    let run = || -> Result<f64> {
        let model = model_for(problem.as_ref(), &[128, 128], 4)?;
        let train = TrainConfig {
            steps: 20,
            batch_size: 32,
            eval_every: 0,
            eval_size: 32,
            ..Default::default()
        };
        let summary =
            Trainer::new(problem.as_ref(), config.clone(), model.as_ref(), train, 4)?.run()?;
        Ok(summary.final_eval_objective)
    };
    assert_eq!(run()?, run()?);
    Ok(())
}

#[test]
fn non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint() -> Result<()> {
    let dir = tmpdir("nan");
    let config = ProblemConfig::Quadratic(QuadraticConfig::default());
    let problem = config.build()?;
    let model = model_for(problem.as_ref(), &[128, 128], 0)?;
    // A huge learning rate makes the quadratic objective overflow f32 within a few steps.
    let train = TrainConfig {
        steps: 200,
        batch_size: 16,
        learning_rate: 1e6,
        eval_every: 0,
        eval_size: 16,
        ..Default::default()
    };
    let err = Trainer::new(problem.as_ref(), config.clone(), model.as_ref(), train, 0)?
        .checkpoint_to(&dir)
        .run()
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NonFinite { .. }), "{msg}");
    assert!(msg.contains("non-finite"), "{msg}");
    let amortize::train::Loaded {
        meta,
        model: loaded,
        ..
    } = Checkpoint::load(&dir, &Device::Cpu)?;
    assert!(meta.step < 200);
    for (a, b) in loaded.params().vars().zip(model.params().vars()) {
        let finite = a
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_finite());
        assert!(finite, "the kept checkpoint holds finite parameters");
        assert_eq!(max_abs_diff(a.as_tensor(), b.as_tensor())?, 0.0);
    }
    Ok(())
}

/// The same with the ES estimator, whose perturbed losses overflow before any unperturbed one
/// is computed: the error names the ES perturbation and the step it happened at, and the last
/// good parameters are saved as well.
#[test]
fn non_finite_es_loss_stops_training_at_its_step_and_keeps_a_checkpoint() -> Result<()> {
    let dir = tmpdir("nan-es");
    let config = ProblemConfig::Quadratic(QuadraticConfig::default());
    let problem = config.build()?;
    let model = model_for(problem.as_ref(), &[32], 0)?;
    let train = TrainConfig {
        steps: 200,
        batch_size: 16,
        learning_rate: 1e12,
        eval_every: 0,
        eval_size: 16,
        gradient: amortize::train::GradientEstimator::Es {
            sigma: 0.05,
            samples: 2,
        },
        ..Default::default()
    };
    let err = Trainer::new(problem.as_ref(), config.clone(), model.as_ref(), train, 0)?
        .checkpoint_to(&dir)
        .run()
        .unwrap_err();
    let msg = err.to_string();
    let Error::NonFinite { what, step } = &err else {
        panic!("{msg}");
    };
    assert!(what.contains("ES perturbation"), "{msg}");
    assert!(*step > 1, "the failing step, not 0: {msg}");
    let meta = Checkpoint::read_meta(&dir)?;
    assert_eq!(meta.step, step - 1, "the last good step is saved");
    Ok(())
}

#[test]
fn checkpoints_round_trip_and_refuse_mismatches() -> Result<()> {
    let dir = tmpdir("ckpt");
    let config = ProblemConfig::Sphere(SphereConfig::default());
    let problem = config.build()?;
    let model = model_for(problem.as_ref(), &[128, 128], 0)?;
    let train = TrainConfig {
        steps: 5,
        batch_size: 8,
        eval_every: 0,
        eval_size: 8,
        ..Default::default()
    };
    Trainer::new(problem.as_ref(), config.clone(), model.as_ref(), train, 7)?
        .checkpoint_to(&dir)
        .run()?;
    let amortize::train::Loaded {
        meta,
        problem: p2,
        model: m2,
    } = Checkpoint::load_for(&dir, &config, &Device::Cpu)?;
    assert_eq!(meta.step, 5);
    assert_eq!(meta.seed, 7);
    let x = problem.sample_contexts(9, &mut StdRng::seed_from_u64(1), &Device::Cpu)?;
    let a = model.forward(&x, problem.as_ref())?.y;
    let b = m2.forward(&x, p2.as_ref())?.y;
    assert_eq!(max_abs_diff(&a, &b)?, 0.0);

    // Another problem.
    let other = ProblemConfig::Toy1d(Toy1dConfig::default());
    let e = Checkpoint::load_for(&dir, &other, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("trained on problem 'sphere'"), "{e}");
    // Same family, other settings.
    let other = ProblemConfig::Sphere(SphereConfig {
        gamma: 0.1,
        ..Default::default()
    });
    assert!(Checkpoint::load_for(&dir, &other, &Device::Cpu).is_err());

    // Corrupt weights.
    let bad = tmpdir("ckpt-bad");
    for f in ["weights.safetensors", "meta.json"] {
        std::fs::copy(dir.join(f), bad.join(f)).unwrap();
    }
    std::fs::write(bad.join("weights.safetensors"), b"not a safetensors file").unwrap();
    let e = Checkpoint::load(&bad, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("weights.safetensors is missing or corrupt"),
        "{e}"
    );
    // Weights of another shape.
    let meta_text = std::fs::read_to_string(dir.join("meta.json")).unwrap();
    std::fs::copy(
        dir.join("weights.safetensors"),
        bad.join("weights.safetensors"),
    )
    .unwrap();
    std::fs::write(bad.join("meta.json"), meta_text.replace("128,", "64,")).unwrap();
    let e = Checkpoint::load(&bad, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("do not match the recorded model"), "{e}");
    // Corrupt and future metadata.
    std::fs::write(bad.join("meta.json"), "{ not json").unwrap();
    let e = Checkpoint::load(&bad, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("meta.json is corrupt"), "{e}");
    std::fs::write(
        bad.join("meta.json"),
        meta_text.replace("\"format_version\": 1", "\"format_version\": 99"),
    )
    .unwrap();
    let e = Checkpoint::load(&bad, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("format version 99"), "{e}");
    // Missing folder.
    let e = Checkpoint::load(&bad.join("nope"), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("is this a checkpoint folder"), "{e}");
    Ok(())
}

/// The fused path computes the same updates as the composite (autodiff) path.
#[test]
fn fused_and_composite_paths_take_the_same_steps() -> Result<()> {
    let config = ProblemConfig::Sphere(SphereConfig::default());
    let problem = config.build()?;
    let mut finals = Vec::new();
    for fused in [true, false] {
        let model = model_for(problem.as_ref(), &[32, 32], 3)?;
        let train = TrainConfig {
            steps: 30,
            batch_size: 64,
            learning_rate: 1e-3,
            clip_grad_norm: Some(0.05),
            eval_every: 0,
            eval_size: 16,
            fused,
            ..Default::default()
        };
        let trainer = Trainer::new(problem.as_ref(), config.clone(), model.as_ref(), train, 3)?;
        assert_eq!(trainer.uses_fused_path(), fused);
        let mut records = Vec::new();
        let s = trainer.observe(Collect(&mut records)).run()?;
        assert_eq!(s.fused, fused);
        let losses: Vec<f64> = records.iter().filter_map(|r| r.get("loss")).collect();
        finals.push((model, losses));
    }
    let (fused_model, fused_losses) = &finals[0];
    let (comp_model, comp_losses) = &finals[1];
    for (a, b) in fused_losses.iter().zip(comp_losses) {
        assert!((a - b).abs() < 1e-4, "loss {a} vs {b}");
    }
    for (a, b) in fused_model.params().vars().zip(comp_model.params().vars()) {
        let d = max_abs_diff(a.as_tensor(), b.as_tensor())?;
        assert!(d < 1e-4, "parameters differ by {d}");
    }
    // The runs moved θ: the comparison is not between two untouched initialisations.
    let fresh = model_for(problem.as_ref(), &[32, 32], 3)?;
    let moved = fresh
        .params()
        .vars()
        .zip(fused_model.params().vars())
        .map(|(a, b)| max_abs_diff(a.as_tensor(), b.as_tensor()).unwrap())
        .fold(0.0, f64::max);
    assert!(moved > 1e-3);
    Ok(())
}

#[test]
fn fused_prediction_matches_the_model() -> Result<()> {
    let problem = Sphere::new(SphereConfig::default())?;
    let mlp = Mlp::new(
        MlpConfig::default(),
        16,
        3,
        &mut StdRng::seed_from_u64(2),
        &Device::Cpu,
    )?;
    let x = problem.sample_contexts(33, &mut StdRng::seed_from_u64(1), &Device::Cpu)?;
    let a = mlp.forward(&x, &problem)?.y;
    let b = amortize::model::FusedMlp::from_mlp(&mlp)?.predict(&x, &problem)?;
    assert_eq!(a.dims(), b.dims());
    assert!(max_abs_diff(&a, &b)? < 1e-5);
    Ok(())
}

/// The layer-wise plan: K stages of (nearly) equal length in order, each a new-layer phase at
/// the base rate and then the fine-tune factors, phases contiguous and covering every step;
/// bad settings are refused by name.
#[test]
fn layerwise_plan_covers_every_step_in_stages_and_phases() -> Result<()> {
    use amortize::train::Layerwise;
    let lw = Layerwise::default();
    let (steps, layers) = (100, 3);
    let plan: Vec<_> = (0..steps).map(|s| lw.phase(s, steps, layers)).collect();
    // Stages of 34, 33, 33 steps; inside each, phases of ~1/3 with rates 1, 0.2, 0.02.
    for (s, p) in plan.iter().enumerate() {
        assert!(
            p.first <= s && s < p.first + p.len,
            "step {s} outside {p:?}"
        );
        assert_eq!(
            plan[p.first], *p,
            "phase {p:?} does not start where it says"
        );
    }
    let phases: Vec<_> = plan
        .iter()
        .enumerate()
        .filter(|(s, p)| p.first == *s)
        .map(|(_, p)| (p.depth, p.only_new_layer, p.rate, p.len))
        .collect();
    assert_eq!(
        phases,
        [
            (1, true, 1.0, 11),
            (1, false, 0.2, 12),
            (1, false, 0.02, 11),
            (2, true, 1.0, 11),
            (2, false, 0.2, 11),
            (2, false, 0.02, 11),
            (3, true, 1.0, 11),
            (3, false, 0.2, 11),
            (3, false, 0.02, 11),
        ]
    );
    let plain = Layerwise {
        new_layer_fraction: 0.0,
        fine_tune: vec![1.0],
        finish: None,
    };
    let stages: Vec<usize> = (0..10).map(|s| plain.phase(s, 10, 4).depth).collect();
    assert_eq!(stages, [1, 1, 1, 2, 2, 3, 3, 3, 4, 4]);
    // A finish of 40% of 20 steps: the 4 stages split the first 12, then all 4 layers train
    // together for 8 steps at 0.1× the rate and batch 256.
    let finished = Layerwise {
        finish: Some(amortize::train::Finish {
            fraction: 0.4,
            rate: 0.1,
            batch_size: Some(256),
        }),
        ..plain.clone()
    };
    let stages: Vec<usize> = (0..20).map(|s| finished.phase(s, 20, 4).depth).collect();
    assert_eq!(
        stages,
        [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4]
    );
    assert_eq!(finished.phase(11, 20, 4).batch_size, None);
    let last = finished.phase(15, 20, 4);
    assert_eq!((last.first, last.len, last.rate), (12, 8, 0.1));
    assert_eq!((last.only_new_layer, last.batch_size), (false, Some(256)));
    for bad in [
        Layerwise {
            new_layer_fraction: 1.5,
            ..Layerwise::default()
        },
        Layerwise {
            new_layer_fraction: 0.5,
            fine_tune: vec![],
            ..Layerwise::default()
        },
        Layerwise {
            finish: Some(amortize::train::Finish {
                fraction: 1.0,
                rate: 0.1,
                batch_size: None,
            }),
            ..Layerwise::default()
        },
        Layerwise {
            new_layer_fraction: 0.5,
            fine_tune: vec![f64::NAN],
            ..Layerwise::default()
        },
    ] {
        let err = bad.validate().expect_err("bad layerwise settings");
        assert!(err.to_string().contains("layerwise"), "{err}");
    }
    Ok(())
}
