//! The library's integration tests: one binary, one submodule per concern.

/// The evaluation harness: gap and speed at equal quality.
mod evaluation;
/// Fixed-point families, NeuralFP and HyperAA against Anderson.
mod fixed_points;
/// Gradients of every problem: closed form vs autodiff vs finite differences; second order.
mod gradients;
/// Problem families: samplers, exact solvers, bad input.
mod problems;
/// Differentiable projections: membership, idempotence, non-expansiveness, VJPs.
mod projections;
/// Convex QPs: ADMM against Clarabel, infeasibility, warm starts, bad data.
mod qp;
/// Parametric QP families and ADMM's update mode (one analysis, many QPs).
mod qp_families;
/// Semi-amortized models: unrolled steps, their adjoints, warm start vs end to end.
mod semi_amortized;
/// Classical solvers: known solutions, optimality conditions, statuses.
mod solvers;
/// Sparse coding: the lasso family and LISTA.
mod sparse_coding;
/// Training lowers the objective; checkpoints round-trip and refuse mismatches.
mod training;
