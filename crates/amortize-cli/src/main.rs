//! `amortize`: train, evaluate and deploy amortized optimization models from the command line.
//!
//! The binary is thin orchestration over the `amortize` library: it parses arguments,
//! validates experiment files, draws progress bars and figures, and writes run folders.

mod bench;
mod bench_meta;
mod bench_solvers;
mod commands;
mod contexts;
mod experiment;
mod fixed_point_report;
mod memory;
mod plots;
mod progress;
mod report;
mod rlqp_run;
mod tutorial_figures;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

// mimalloc: candle allocates a fresh buffer for every tensor op, and the system allocator
// makes small-batch training steps several times slower (measured 3.7× at batch 8). Wrapped in
// byte counters for the memory columns of `bench meta`.
#[global_allocator]
static GLOBAL: memory::Counting = memory::Counting;

/// Amortized optimization: learn models that predict the solutions of whole families of
/// optimization problems.
#[derive(Debug, Parser)]
#[command(name = "amortize", version, about)]
pub struct Cli {
    /// Print nothing but results (no progress bars).
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Seed of everything random (overrides the experiment's seed).
    #[arg(long, global = true)]
    pub seed: Option<u64>,
    /// Folder that receives run folders and outputs.
    #[arg(long, global = true, default_value = "runs")]
    pub out: PathBuf,
    /// Compute threads (default 1: candle's threaded kernels slow down on a busy 2-core machine).
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train, evaluate and write a report folder `<out>/<name>/` for a built-in experiment
    /// (`sphere`, `toy1d`) or an experiment TOML file.
    Run {
        /// Built-in experiment name or path to a .toml file.
        #[arg(default_value = "sphere")]
        experiment: String,
        /// Override the number of training steps.
        #[arg(long)]
        steps: Option<usize>,
    },
    /// Train only: writes the checkpoint and metrics into `<out>/<name>/`.
    Train {
        /// Built-in experiment name or path to a .toml file.
        #[arg(default_value = "sphere")]
        experiment: String,
        /// Override the number of training steps.
        #[arg(long)]
        steps: Option<usize>,
    },
    /// Evaluate a checkpoint: amortization gap and speed at equal quality on fresh contexts.
    Eval {
        /// Checkpoint folder (holds meta.json and weights.safetensors).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Number of held-out contexts.
        #[arg(long, default_value_t = 1024)]
        n: usize,
        /// Gap tolerance for the "solved" fraction.
        #[arg(long, default_value_t = 0.01)]
        tolerance: f64,
        /// Refuse the checkpoint unless it was trained on this experiment's problem.
        #[arg(long)]
        experiment: Option<String>,
    },
    /// Predict solutions for contexts read from a CSV or JSON file; prints JSON.
    Predict {
        /// Checkpoint folder.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Contexts file (.csv rows or .json array of arrays).
        #[arg(long)]
        contexts: PathBuf,
        /// Write the JSON here (atomically) instead of printing it.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Solve instances from scratch with a classical solver; prints the solutions as JSON.
    Solve {
        /// Built-in problem family (default settings).
        #[arg(long, default_value = "sphere")]
        problem: String,
        /// Solver: gd, gd-armijo, adam, lbfgs, newton, ista, fista (ista/fista add an l1 term,
        /// see --l1), cem, dcem (128 samples, 12 elites; dcem with soft top-k), or admm for QPs
        /// (--qp file, or --n random QPs of OSQP's class with --qp-size variables).
        #[arg(long, default_value = "gd-armijo")]
        solver: String,
        /// Contexts file (.csv or .json); without it, --n contexts are drawn with --seed.
        #[arg(long)]
        contexts: Option<PathBuf>,
        /// Number of contexts to draw when no file is given.
        #[arg(long, default_value_t = 8)]
        n: usize,
        /// Stop when every residual is at most this.
        #[arg(long, default_value_t = 1e-6)]
        tol: f64,
        /// Iteration budget.
        #[arg(long, default_value_t = 10_000)]
        max_iters: usize,
        /// Step size (gd, adam, ista, fista), first trial step (gd-armijo), or newton's fallback
        /// gradient step where the Hessian is not positive definite.
        #[arg(long, default_value_t = 0.1)]
        lr: f64,
        /// Weight α of the α‖y‖₁ term for ista/fista (the lasso family uses its own α and
        /// step 1/L).
        #[arg(long, default_value_t = 0.1)]
        l1: f64,
        /// admm: a QP as JSON ({"P": rows, "q", "A": rows, "l", "u"}, null bounds infinite) or a
        /// list of them.
        #[arg(long)]
        qp: Option<PathBuf>,
        /// admm without --qp: the size n of the generated QPs (random: n variables, m = 10n
        /// constraints).
        #[arg(long, default_value_t = 10)]
        qp_size: usize,
        /// admm without --qp: the class of the generated QPs (random, the default, equality,
        /// portfolio, lasso, svm, huber, control).
        #[arg(long)]
        qp_class: Option<String>,
        /// admm: choose ρ with a learned RLQP policy (a `policy/` folder written by
        /// `run rlqp`), consulted on the schedule it was trained with.
        #[arg(long)]
        rho_policy: Option<PathBuf>,
        /// admm: solve the QPs one after another in OSQP's update mode (one set-up; they must
        /// share P and A). Without --qp, the QPs are drawn from one parametric family of
        /// --qp-class.
        #[arg(long)]
        sequence: bool,
        /// admm with --sequence: start each QP from the previous one's solution instead of
        /// zero (OSQP's warm starting in its update mode).
        #[arg(long)]
        warm_sequence: bool,
        /// Write the JSON here (atomically) instead of printing it.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Reproduce a figure of the tutorial into `<out>/figures/` (PNG, SVG and CSV).
    Figure {
        /// Which figure.
        #[arg(value_enum)]
        which: tutorial_figures::Which,
    },
    /// List problems, models, projections, solvers and built-in experiments.
    List,
    /// Benchmarks that print tables (see docs/benchmarks.md).
    Bench {
        /// Which benchmark.
        #[arg(value_enum, default_value_t = bench::Which::TrainStep)]
        which: bench::Which,
        /// Batch sizes to time.
        #[arg(long, value_delimiter = ',', default_value = "8,256,4096")]
        batches: Vec<usize>,
        /// Timed repetitions per measurement (the median counts).
        #[arg(long, default_value_t = 50)]
        repeats: usize,
        /// Rounds alternating between the baselines and ours (the median counts).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Skip the Python (PyTorch, JAX, OSQP) baselines.
        #[arg(long)]
        no_baselines: bool,
        /// solvers: run only this part (table, lasso or qp), or one of the extra parts qp-costs and kkt.
        #[arg(long)]
        part: Option<String>,
        /// solvers: random QPs per size.
        #[arg(long, default_value_t = 1000)]
        qp_instances: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    // Before any thread exists: second-order autodiff (see amortize::autodiff) and the number
    // of compute threads candle and its kernels use.
    amortize::autodiff::enable_second_order();
    if std::env::var_os("RAYON_NUM_THREADS").is_none() || cli.threads != 1 {
        std::env::set_var("RAYON_NUM_THREADS", cli.threads.max(1).to_string());
    }
    if let Err(err) = commands::dispatch(cli) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
