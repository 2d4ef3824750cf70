//! Special functions the scores need (std has no erfc).

/// Complementary error function with fractional error below 1.2e-7 everywhere
/// (Chebyshev fit from Numerical Recipes, `erfcc`), so tails down to 1e-300 keep their
/// relative accuracy, which a likelihood threshold of 0.9999 needs.
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// P(Z > z) for a standard normal Z.
pub fn normal_upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; relative error below 1e-14).
pub fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1 − x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Continued fraction of the incomplete beta function (modified Lentz, Numerical Recipes
/// `betacf`); converges fast for x < (a + 1) / (a + b + 2).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// The regularised incomplete beta function I_x(a, b), for a, b > 0 and x in [0, 1].
pub fn inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, 1.0 - x) / b
    }
}

/// P(|T| ≥ |t|) for Student's t with `dof` degrees of freedom (dof > 0). Small tails keep
/// their relative accuracy (the continued fraction is evaluated directly there).
pub fn student_t_two_sided_tail(t: f64, dof: f64) -> f64 {
    inc_beta(0.5 * dof, 0.5, dof / (dof + t * t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_known_values() {
        // Reference values of erfc and of the normal tail.
        let cases = [
            (0.0, 1.0),
            (0.5, 0.479_500_122),
            (1.0, 0.157_299_207),
            (3.0, 2.209_049_7e-5),
        ];
        for (x, want) in cases {
            let got = erfc(x);
            assert!(
                ((got - want) / want).abs() < 2e-7,
                "erfc({x}) = {got}, want {want}"
            );
        }
        assert!((erfc(-1.0) - (2.0 - 0.157_299_207)).abs() < 1e-7);
        assert!((normal_upper_tail(3.719_016_5) - 1e-4).abs() < 1e-10);
        assert!(normal_upper_tail(40.0) >= 0.0);
    }

    #[test]
    fn gamma_and_student_t_match_known_values() {
        // ln Γ: Γ(5) = 24, Γ(1/2) = √π, Γ(0.1) = 9.513507698668732.
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-13);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-13);
        assert!((ln_gamma(0.1) - 9.513_507_698_668_732f64.ln()).abs() < 1e-12);
        // Two-sided Student-t tails: 1 dof is the Cauchy, P(|T| ≥ 1) = 1/2 and
        // P(|T| ≥ t) = 1 − 2·atan(t)/π; 2 dof: P(|T| ≥ t) = 1 − t/√(2 + t²).
        assert!((student_t_two_sided_tail(1.0, 1.0) - 0.5).abs() < 1e-12);
        for t in [0.3, 2.0, 50.0, 1e4] {
            let cauchy = 1.0 - 2.0 * f64::atan(t) / std::f64::consts::PI;
            let got = student_t_two_sided_tail(t, 1.0);
            assert!(
                ((got - cauchy) / cauchy).abs() < 1e-9,
                "t {t}: {got} vs {cauchy}"
            );
            let two = 1.0 - t / (2.0 + t * t).sqrt();
            let got = student_t_two_sided_tail(t, 2.0);
            assert!(((got - two) / two).abs() < 1e-6, "t {t}: {got} vs {two}");
        }
        // Tabulated: t(10 dof) = 3.169 has a two-sided tail of 0.01; 4.587 of 0.001.
        assert!((student_t_two_sided_tail(3.169_272_67, 10.0) - 0.01).abs() < 1e-8);
        assert!((student_t_two_sided_tail(4.586_893_86, 10.0) - 0.001).abs() < 1e-9);
        // Many degrees of freedom approach the normal: 2·P(Z ≥ 5) = 5.733e-7.
        let normal = erfc(5.0 / std::f64::consts::SQRT_2);
        let t = student_t_two_sided_tail(5.0, 1e6);
        assert!(((t - normal) / normal).abs() < 1e-3, "{t} vs {normal}");
        // Deep tails stay positive and ordered.
        let (a, b) = (
            student_t_two_sided_tail(40.0, 30.0),
            student_t_two_sided_tail(60.0, 30.0),
        );
        assert!(a > b && b > 0.0, "{a} {b}");
    }
}
