//! `amortize bench meta`: time and peak memory of one meta-gradient (a meta-batch of 25
//! sinusoid tasks, the 1-40-40-1 learner) for MAML (backpropagation through the inner steps,
//! second order), first-order MAML and iMAML (implicit differentiation), against the number of
//! inner steps K. Unrolling keeps every step's graph, so its memory grows with K; the implicit
//! gradient keeps none.

use amortize::eval::time_median;
use amortize::model::{Adjoint, InitConfig, RateConfig, UnrolledConfig};
use amortize::prelude::*;
use amortize::problem::{Sinusoid, SinusoidConfig};
use amortize::train::composite_step;
use anyhow::Result;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::memory;

/// Runs the benchmark and prints its table.
pub fn run(repeats: usize) -> Result<()> {
    let problem = Sinusoid::new(SinusoidConfig::default())?;
    let x = problem.sample_contexts(25, &mut StdRng::seed_from_u64(1), &Device::Cpu)?;
    let methods = [
        ("MAML (unrolled, 2nd order)", Adjoint::Full),
        ("FOMAML (first order)", Adjoint::FirstOrder),
        (
            "iMAML (implicit, 5 CG)",
            Adjoint::Implicit {
                lambda: 2.0,
                cg_iters: 5,
            },
        ),
    ];
    println!("| method | inner steps K | ms per meta-batch | peak extra heap (MiB) |");
    println!("|---|---|---|---|");
    for (name, adjoint) in methods {
        for k in [1usize, 5, 20, 100] {
            let model = ModelConfig::Unrolled(UnrolledConfig {
                init: InitConfig::Problem,
                steps: k,
                rate: RateConfig::Fixed { value: 0.01 },
                adjoint,
                update: amortize::model::UpdateRule::Gradient,
            })
            .build(&problem, &mut StdRng::seed_from_u64(0), &Device::Cpu)?;
            let cfg = TrainConfig {
                loss: Loss::Query,
                ..TrainConfig::default()
            };
            let vars: Vec<candle_core::Var> = model.params().vars().cloned().collect();
            let tensors: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
            let mut state = cfg.adam.init(&tensors)?;
            let mut step = || -> amortize::Result<()> {
                composite_step(
                    model.as_ref(),
                    &problem,
                    &cfg,
                    &vars,
                    &mut state,
                    &x,
                    None,
                    1e-9,
                    None,
                    0.0,
                )
                .map(|_| ())
            };
            step()?;
            let base = memory::current();
            memory::reset_peak();
            step()?;
            let extra = memory::peak().saturating_sub(base) as f64 / (1024.0 * 1024.0);
            let seconds = time_median(repeats, &mut step)?;
            println!("| {name} | {k} | {:.2} | {extra:.2} |", seconds * 1e3);
        }
    }
    Ok(())
}
