use amortize::autodiff::grad_at;
use amortize::prelude::*;
use amortize::projection::{projection_zoo, EuclideanSimplex, Projection, SecondOrderCone};
use amortize::testing::{finite_difference_grad, max_abs_diff};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

fn random(n: usize, d: usize, scale: f64, seed: u64) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let v: Vec<f64> = (0..n * d)
        .map(|_| {
            let z: f64 = StandardNormal.sample(&mut rng);
            scale * z
        })
        .collect();
    Ok(Tensor::from_vec(v, (n, d), &Device::Cpu)?)
}

fn max_of(t: &Tensor) -> Result<f64> {
    Ok(t.flatten_all()?.max(0)?.to_scalar()?)
}

#[test]
fn projections_land_in_their_sets() -> Result<()> {
    for p in projection_zoo() {
        let y = random(40, 9, 2.0, 1)?;
        let v = max_of(&p.violation(&p.project(&y)?)?)?;
        assert!(v < 1e-9, "{}: violation {v}", p.name());
        // The certificate is not vacuous: raw inputs violate (every set here excludes some of
        // them), except for the boxes' interiors that random draws rarely leave.
        if !["tanh-box", "unit-cube"].contains(&p.name()) {
            assert!(max_of(&p.violation(&y)?)? > 1e-3, "{}", p.name());
        }
    }
    Ok(())
}

#[test]
fn euclidean_projections_are_idempotent_and_nonexpansive() -> Result<()> {
    for p in projection_zoo() {
        let a = random(30, 9, 2.0, 2)?;
        let b = random(30, 9, 2.0, 3)?;
        let pa = p.project(&a)?;
        if p.idempotent() {
            let e = max_abs_diff(&p.project(&pa)?, &pa)?;
            assert!(e < 1e-12, "{}: not idempotent ({e})", p.name());
        }
        if p.nonexpansive() {
            let pb = p.project(&b)?;
            let d_out: Vec<f64> = pa.sub(&pb)?.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
            let d_in: Vec<f64> = a.sub(&b)?.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
            for (o, i) in d_out.iter().zip(&d_in) {
                assert!(o <= &(i + 1e-12), "{}: expands {i} to {o}", p.name());
            }
        }
    }
    Ok(())
}

#[test]
fn projection_vjps_match_finite_differences() -> Result<()> {
    for p in projection_zoo() {
        let y = random(5, 9, 1.5, 4)?;
        let v = random(5, 9, 1.0, 5)?;
        let g = grad_at(&y, |y| Ok(p.project(y)?.mul(&v)?.sum_all()?))?;
        let fd = finite_difference_grad(&y, 1e-6, |y| {
            Ok(p.project(y)?.mul(&v)?.sum_all()?.to_scalar::<f64>()?)
        })?;
        let e = max_abs_diff(&g, &fd)?;
        assert!(e < 1e-6, "{}: VJP off by {e}", p.name());
        assert!(max_of(&g.abs()?)? > 1e-3, "{}: trivial gradient", p.name());
    }
    Ok(())
}

#[test]
fn projections_match_hand_computed_values() -> Result<()> {
    let t = |v: &[f64]| Tensor::from_slice(v, (1, v.len()), &Device::Cpu);
    let s = EuclideanSimplex::default();
    let got: Vec<f64> = s.project(&t(&[0.5, 0.2, 2.0])?)?.flatten_all()?.to_vec1()?;
    assert_eq!(got, vec![0.0, 0.0, 1.0]);
    let got: Vec<f64> = s.project(&t(&[0.4, 0.3, 0.1])?)?.flatten_all()?.to_vec1()?;
    // τ = (0.8 − 1)/3, so each entry rises by 1/15.
    for (a, b) in got
        .iter()
        .zip([0.4 + 0.2 / 3.0, 0.3 + 0.2 / 3.0, 0.1 + 0.2 / 3.0])
    {
        assert!((a - b).abs() < 1e-12, "{got:?}");
    }
    let two = EuclideanSimplex::new(2.0)?;
    let got: Vec<f64> = two.project(&t(&[0.0, 0.0])?)?.flatten_all()?.to_vec1()?;
    assert_eq!(got, vec![1.0, 1.0]);
    assert!(EuclideanSimplex::new(0.0).is_err());
    let c = SecondOrderCone;
    let got: Vec<f64> = c.project(&t(&[3.0, 4.0, 0.0])?)?.flatten_all()?.to_vec1()?;
    assert_eq!(got, vec![1.5, 2.0, 2.5]);
    let got: Vec<f64> = c
        .project(&t(&[3.0, 4.0, -6.0])?)?
        .flatten_all()?
        .to_vec1()?;
    assert_eq!(got, vec![0.0, 0.0, 0.0]);
    let got: Vec<f64> = c.project(&t(&[3.0, 4.0, 6.0])?)?.flatten_all()?.to_vec1()?;
    assert_eq!(got, vec![3.0, 4.0, 6.0]);
    Ok(())
}

#[test]
fn birkhoff_refuses_rows_of_the_wrong_length() {
    let b = amortize::projection::Birkhoff::new(3, 1.0, 10).unwrap();
    let y = Tensor::zeros((2, 8), DType::F64, &Device::Cpu).unwrap();
    let e = b.project(&y).unwrap_err().to_string();
    assert!(e.contains("k² = 9"), "{e}");
    assert!(amortize::projection::TanhBox::new(1.0, 1.0).is_err());
}

#[test]
fn symmetric_eigen_reconstructs_and_orders_nothing_away() {
    use amortize::projection::symmetric_eigen;
    // [[2, 1], [1, 2]] has eigenvalues 1 and 3.
    let (mut lam, _) = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2);
    lam.sort_by(|a, b| a.total_cmp(b));
    assert!(
        (lam[0] - 1.0).abs() < 1e-12 && (lam[1] - 3.0).abs() < 1e-12,
        "{lam:?}"
    );
    // A random symmetric 5×5: V diag(λ) Vᵀ = A and VᵀV = I.
    let k = 5;
    let r: Vec<f64> = random(1, k * k, 1.0, 9)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let a: Vec<f64> = (0..k * k)
        .map(|ij| 0.5 * (r[ij] + r[(ij % k) * k + ij / k]))
        .collect();
    let (lam, v) = symmetric_eigen(&a, k);
    for i in 0..k {
        for j in 0..k {
            let rec: f64 = (0..k).map(|l| v[i * k + l] * lam[l] * v[j * k + l]).sum();
            let ortho: f64 = (0..k).map(|l| v[l * k + i] * v[l * k + j]).sum();
            assert!((rec - a[i * k + j]).abs() < 1e-12);
            assert!((ortho - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
        }
    }
}

#[test]
fn psd_and_capped_simplex_match_hand_computed_values() -> Result<()> {
    use amortize::projection::{CappedSimplex, PsdCone};
    let t = |v: &[f64]| Tensor::from_slice(v, (1, v.len()), &Device::Cpu);
    // diag(2, −1) ↦ diag(2, 0).
    let got: Vec<f64> = PsdCone::new(2)?
        .project(&t(&[2.0, 0.0, 0.0, -1.0])?)?
        .flatten_all()?
        .to_vec1()?;
    for (a, b) in got.iter().zip([2.0, 0.0, 0.0, 0.0]) {
        assert!((a - b).abs() < 1e-12, "{got:?}");
    }
    // Equal scores share the mass k equally.
    let got: Vec<f64> = CappedSimplex::new(2.0, 0.5)?
        .project(&t(&[0.3; 5])?)?
        .flatten_all()?
        .to_vec1()?;
    assert!(got.iter().all(|v| (v - 0.4).abs() < 1e-12), "{got:?}");
    // A large gap selects the top k almost surely.
    let got: Vec<f64> = CappedSimplex::new(1.0, 0.01)?
        .project(&t(&[0.0, 5.0, 0.1])?)?
        .flatten_all()?
        .to_vec1()?;
    assert!(got[1] > 1.0 - 1e-9 && got[0] < 1e-9, "{got:?}");
    assert!(CappedSimplex::new(3.0, 1.0)?
        .project(&t(&[0.0, 1.0, 2.0])?)
        .is_err());
    Ok(())
}

/// The exponential cone against hand-checked cases and an independent projection: the nearest
/// of 400k points of the cone's boundary surface s·(ρ, 1, e^ρ) and of its piece {s = 0}.
#[test]
fn exp_cone_matches_cases_and_a_brute_force_projection() -> Result<()> {
    use amortize::projection::ExpCone;
    let t = |v: &[f64]| Tensor::from_slice(v, (1, 3), &Device::Cpu);
    let p =
        |v: &[f64]| -> Result<Vec<f64>> { Ok(ExpCone.project(&t(v)?)?.flatten_all()?.to_vec1()?) };
    // Inside: unchanged. Polar (r > 0, r·e^{s/r} ≤ −e·t): zero. r, s < 0: (r, 0, max(t, 0)).
    assert_eq!(p(&[0.0, 1.0, 2.0])?, vec![0.0, 1.0, 2.0]);
    assert_eq!(p(&[1.0, -1.0, -2.0])?, vec![0.0, 0.0, 0.0]);
    assert_eq!(p(&[-1.0, -2.0, 3.0])?, vec![-1.0, 0.0, 3.0]);
    assert!(ExpCone
        .project(&Tensor::zeros((2, 4), DType::F64, &Device::Cpu)?)
        .is_err());
    let mut rng = StdRng::seed_from_u64(8);
    for _ in 0..20 {
        let v: Vec<f64> = (0..3)
            .map(|_| 2.0 * <StandardNormal as Distribution<f64>>::sample(&StandardNormal, &mut rng))
            .collect();
        let ours = p(&v)?;
        let d_ours: f64 = (0..3).map(|i| (ours[i] - v[i]).powi(2)).sum();
        // Brute force over the boundary and the origin (the projection of a point outside the
        // cone lies on its boundary).
        let piece = [v[0].min(0.0), 0.0, v[2].max(0.0)];
        let mut best: f64 = (0..3).map(|i| (piece[i] - v[i]).powi(2)).sum();
        best = best.min(v.iter().map(|x| x * x).sum());
        if ExpCone.violation(&t(&v)?)?.to_vec1::<f64>()?[0] == 0.0 {
            best = 0.0;
        }
        for a in 0..2000 {
            let rho = -10.0 + 14.0 * a as f64 / 1999.0;
            let w = [rho, 1.0, rho.exp()];
            let ww: f64 = w.iter().map(|x| x * x).sum();
            let vw: f64 = w.iter().zip(&v).map(|(a, b)| a * b).sum();
            for k in 0..200 {
                // Around the best scale along the ray, and the ray's projection itself.
                let s = (vw / ww).max(0.0) * (0.9 + 0.2 * k as f64 / 199.0);
                let d: f64 = (0..3).map(|i| (s * w[i] - v[i]).powi(2)).sum();
                best = best.min(d);
            }
        }
        assert!(
            d_ours <= best + 1e-9,
            "{v:?}: ours {ours:?} at {d_ours}, brute force {best}"
        );
        assert!(
            d_ours >= best - 1e-3,
            "{v:?}: ours {d_ours} well below brute force {best}"
        );
    }
    Ok(())
}
