//! Comparison statistics: each arm against the control by Welch's t-test, and the
//! sample-ratio-mismatch check of the unit counts against the weights.
//!
//! ```text
//!  welch:  d = mean_arm - mean_control     se^2 = s_c + s_a,  s = variance / n
//!          t = d / se                      df = se^4 / (s_c^2 / (n_c - 1) + s_a^2 / (n_a - 1))
//!          p = 2 P(T_df > |t|)             ci95 = d ± t_{0.975, df} se
//!  srm:    chi^2 = Σ (observed - expected)^2 / expected,  expected_i = total w_i / Σ w
//!          p = P(χ²_{arms-1} > chi^2)      flagged = p < 0.001 and every arm has >= 8 units
//! ```
//!
//! Whatever cannot be computed is `None` (null in JSON), never NaN or infinite: an arm with
//! fewer than 2 samples has no variance, two arms without variance have no t statistic, a
//! control mean of 0 has no relative difference.

use std::f64::consts::{PI, SQRT_2};

use serde::Serialize;
use statrs::function::{beta, erf, gamma};

/// The sample-ratio check flags a p-value below this.
pub const SAMPLE_RATIO_P_VALUE_MAX: f64 = 0.001;

/// The sample-ratio check flags only once every arm has at least this many units.
pub const SAMPLE_RATIO_UNITS_MIN: u64 = 8;

/// The two-sided tail outside [`Comparison::ci95`].
const CI95_TAIL: f64 = 0.05;

/// The standard normal quantile at 0.975, below which no t quantile at 0.975 lies.
const Z_975: f64 = 1.959_963_984_540_054;

/// From this many degrees of freedom on, the t quantile is the Cornish–Fisher expansion in
/// `1 / df` (Abramowitz & Stegun 26.7.5, four terms), within 1e-15 of scipy's from here up;
/// below it, bisection on the tail probability. statrs' `inverse_cdf` is not used: it drifts
/// from about 1e4 degrees of freedom and does not finish at 1e9.
const DF_QUANTILE_EXPANSION_MIN: f64 = 1e3;

/// From this many degrees of freedom on, the tail probability is the normal tail with its
/// `1 / df` correction, within 1e-7 of scipy's (relative) for |t| up to 6, i.e. p down to
/// 2e-9, and closer the smaller |t|; below it, the regularized incomplete beta function,
/// whose continued fraction (140 terms in statrs) drifts from about 1e7 on (1e-6 off at 1e9).
const DF_TAIL_NORMAL_MIN: f64 = 1e6;

/// One arm's sample: count, mean and sample variance (divided by `n - 1`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Summary {
    /// Number of samples.
    pub n: u64,
    /// Their mean (0 when `n` is 0).
    pub mean: f64,
    /// Their sample variance, `Σ (x - mean)^2 / (n - 1)` (0 when `n < 2`).
    pub variance: f64,
}

impl Summary {
    /// The summary of `n` samples from their sum and sum of squares, as a window aggregate
    /// keeps them. The variance is clamped at 0 (rounding can take `Σx² - (Σx)²/n` just
    /// below it when the samples are all equal).
    pub fn from_sums(n: u64, sum: f64, sum_squares: f64) -> Summary {
        if n == 0 {
            return Summary::default();
        }
        let count = n as f64;
        let mean = sum / count;
        let variance = if n < 2 {
            0.0
        } else {
            ((sum_squares - mean * sum) / (count - 1.0)).max(0.0)
        };
        Summary { n, mean, variance }
    }

    /// The sample standard deviation; `None` below 2 samples or for a variance that is not
    /// finite.
    pub fn stddev(&self) -> Option<f64> {
        (self.n >= 2).then(|| self.variance.sqrt()).and_then(finite)
    }
}

/// An arm against the control. Every field is `None` where it is undefined.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Comparison {
    /// `mean_arm - mean_control`; needs a sample in each.
    pub difference: Option<f64>,
    /// `difference / mean_control`; `None` when the control mean is 0.
    pub relative_difference: Option<f64>,
    /// The 95% confidence interval of the difference, `[low, high]`.
    pub ci95: Option<(f64, f64)>,
    /// Welch's t statistic.
    pub t: Option<f64>,
    /// The Welch–Satterthwaite degrees of freedom.
    pub df: Option<f64>,
    /// The two-sided p-value of "the means are equal".
    pub p_value: Option<f64>,
}

/// Welch's t-test of `arm` against `control` (unequal variances).
///
/// The difference needs one sample in each arm; the test needs two in each and a variance
/// in at least one (both variances 0 leave the standard error 0: no t, p or interval).
pub fn welch(control: &Summary, arm: &Summary) -> Comparison {
    let mut comparison = Comparison::default();
    if control.n == 0 || arm.n == 0 {
        return comparison;
    }
    let Some(difference) = finite(arm.mean - control.mean) else {
        return comparison;
    };
    comparison.difference = Some(difference);
    if control.mean != 0.0 {
        comparison.relative_difference = finite(difference / control.mean);
    }
    if control.n < 2 || arm.n < 2 {
        return comparison;
    }
    let Some(test) = welch_test(control, arm) else {
        return comparison;
    };
    comparison.t = Some(test.t);
    comparison.df = Some(test.df);
    comparison.p_value = Some(test.p_value);
    comparison.ci95 = t_quantile_975(test.df).and_then(|quantile| {
        let half_width = quantile * test.standard_error;
        Some((
            finite(difference - half_width)?,
            finite(difference + half_width)?,
        ))
    });
    comparison
}

struct WelchTest {
    t: f64,
    df: f64,
    standard_error: f64,
    p_value: f64,
}

/// The t statistic, degrees of freedom and two-sided p-value, when all are finite.
fn welch_test(control: &Summary, arm: &Summary) -> Option<WelchTest> {
    let (vc, va) = (control.variance, arm.variance);
    if !(vc.is_finite() && va.is_finite() && vc >= 0.0 && va >= 0.0) {
        return None;
    }
    let (nc, na) = (control.n as f64, arm.n as f64);
    let (sc, sa) = (vc / nc, va / na);
    let se_squared = sc + sa;
    if se_squared <= 0.0 {
        return None;
    }
    let standard_error = finite(se_squared.sqrt())?;
    let t = finite((arm.mean - control.mean) / standard_error)?;
    let df = finite(se_squared * se_squared / (sc * sc / (nc - 1.0) + sa * sa / (na - 1.0)))?;
    if df <= 0.0 {
        return None;
    }
    let p_value = t_two_sided_tail(t, df)?;
    Some(WelchTest {
        t,
        df,
        standard_error,
        p_value,
    })
}

/// `P(|T| > |t|)` for Student's t with `df` degrees of freedom.
fn t_two_sided_tail(t: f64, df: f64) -> Option<f64> {
    if !(df.is_finite() && df > 0.0) || t.is_nan() {
        return None;
    }
    let tail = if df >= DF_TAIL_NORMAL_MIN {
        // P(|T| > t) = erfc(t / √2) + 2 φ(t) (t³ + t) / (4 df) + O(df⁻²).
        let t = t.abs();
        let density = (-0.5 * t * t).exp() / (2.0 * PI).sqrt();
        let correction = if density == 0.0 {
            0.0
        } else {
            density * (t * t + 1.0) * t / (2.0 * df)
        };
        erf::erfc(t / SQRT_2) + correction
    } else {
        // P(|T| > t) = I_{df / (df + t²)}(df / 2, 1 / 2).
        beta::checked_beta_reg(df / 2.0, 0.5, df / (df + t * t)).ok()?
    };
    finite(tail).map(|p| p.clamp(0.0, 1.0))
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom.
fn t_quantile_975(df: f64) -> Option<f64> {
    if !(df.is_finite() && df > 0.0) {
        return None;
    }
    if df >= DF_QUANTILE_EXPANSION_MIN {
        let (z, z2) = (Z_975, Z_975 * Z_975);
        let g1 = (z2 + 1.0) * z / 4.0;
        let g2 = ((5.0 * z2 + 16.0) * z2 + 3.0) * z / 96.0;
        let g3 = (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) * z / 384.0;
        let g4 = ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0) * z / 92160.0;
        return finite(z + (g1 + (g2 + (g3 + g4 / df) / df) / df) / df);
    }
    // The tail falls as q rises: bracket q, then halve the bracket until it stops shrinking.
    let (mut low, mut high) = (Z_975, 2.0 * Z_975);
    let mut bracketed = false;
    for _ in 0..64 {
        if t_two_sided_tail(high, df)? <= CI95_TAIL {
            bracketed = true;
            break;
        }
        low = high;
        high *= 2.0;
    }
    if !bracketed {
        return None;
    }
    for _ in 0..128 {
        let middle = low + (high - low) / 2.0;
        if middle <= low || middle >= high {
            break;
        }
        if t_two_sided_tail(middle, df)? > CI95_TAIL {
            low = middle;
        } else {
            high = middle;
        }
    }
    finite(low + (high - low) / 2.0)
}

/// The sample-ratio-mismatch check: a chi-squared goodness-of-fit test of the units seen in
/// each arm against the shares the weights promise.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct SampleRatio {
    /// The chi-squared statistic.
    pub chi_squared: Option<f64>,
    /// Its degrees of freedom (arms - 1).
    pub df: Option<u32>,
    /// The p-value of "the units follow the weights".
    pub p_value: Option<f64>,
    /// `p_value < 0.001` and every arm has at least 8 units.
    pub flagged: bool,
}

/// The sample-ratio check of `observed` unit counts against `weights` (relative, in arm
/// order). Everything is `None` unless there are two or more arms, as many weights as
/// counts, each positive and finite, and at least one unit.
pub fn sample_ratio(observed: &[u64], weights: &[f64]) -> SampleRatio {
    let mut check = SampleRatio::default();
    if observed.len() < 2 || observed.len() != weights.len() {
        return check;
    }
    if !weights.iter().all(|w| w.is_finite() && *w > 0.0) {
        return check;
    }
    let weight_sum: f64 = weights.iter().sum();
    let Some(total) = observed.iter().try_fold(0u64, |sum, &n| sum.checked_add(n)) else {
        return check;
    };
    if total == 0 || !weight_sum.is_finite() {
        return check;
    }
    let Ok(df) = u32::try_from(observed.len() - 1) else {
        return check;
    };
    let units = total as f64;
    let chi_squared: f64 = observed
        .iter()
        .zip(weights)
        .map(|(&seen, &weight)| {
            let expected = units * weight / weight_sum;
            let gap = seen as f64 - expected;
            gap * gap / expected
        })
        .sum();
    let Some(chi_squared) = finite(chi_squared) else {
        return check;
    };
    // P(χ²_k > x) = Q(k / 2, x / 2), the regularized upper incomplete gamma function.
    let p_value = if chi_squared <= 0.0 {
        Some(1.0)
    } else {
        gamma::checked_gamma_ur(f64::from(df) / 2.0, chi_squared / 2.0)
            .ok()
            .and_then(finite)
    };
    check.chi_squared = Some(chi_squared);
    check.df = Some(df);
    check.p_value = p_value.map(|p| p.clamp(0.0, 1.0));
    check.flagged = check.p_value.is_some_and(|p| p < SAMPLE_RATIO_P_VALUE_MAX)
        && observed.iter().all(|&n| n >= SAMPLE_RATIO_UNITS_MIN);
    check
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, expected: f64, relative: f64) -> bool {
        (got - expected).abs() <= relative * expected.abs().max(1e-300)
    }

    fn summary(n: u64, mean: f64, variance: f64) -> Summary {
        Summary { n, mean, variance }
    }

    /// Expected values from scipy 1.17: `ttest_ind_from_stats(arm, control,
    /// equal_var=False)` for t and p, the Welch–Satterthwaite formula for df, and
    /// `difference ± t.ppf(0.975, df) * se` for the interval. Rows: control (n, mean,
    /// variance), arm (n, mean, variance), difference, t, df, p, ci low, ci high.
    #[test]
    fn welch_matches_scipy() {
        type Row = (
            (u64, f64, f64),
            (u64, f64, f64),
            f64,
            f64,
            f64,
            f64,
            f64,
            f64,
        );
        let rows: &[Row] = &[
            (
                (50, 10.0, 4.0),
                (60, 11.0, 9.0),
                1.0,
                2.0851441405707476,
                103.32673468008916,
                0.039520528491950604,
                0.04889567387881644,
                1.9511043261211836,
            ),
            (
                (10000, 0.1, 0.09),
                (10000, 0.105, 0.094),
                0.0049999999999999906,
                1.16563101030039,
                19988.55361360416,
                0.24377757316997878,
                -0.003407817979142474,
                0.013407817979142455,
            ),
            (
                (2, 1.5, 0.5),
                (2, 4.0, 2.0),
                2.5,
                2.23606797749979,
                1.4705882352941178,
                0.19872738893452602,
                -4.418522830071064,
                9.418522830071064,
            ),
            (
                (5, 3.0, 0.0),
                (4, 4.0, 1.0),
                1.0,
                2.0,
                3.0,
                0.13932596855884305,
                -0.5912231526418539,
                2.591223152641854,
            ),
            (
                (1000000, 100.0, 400.0),
                (1000000, 100.05, 410.0),
                0.04999999999999716,
                1.7568209223156666,
                1999693.215178299,
                0.07894849074709694,
                -0.005781586670623909,
                0.10578158667061822,
            ),
            (
                (30, 5.2, 1.3),
                (25, 4.6, 2.1),
                -0.6000000000000005,
                -1.6814354376216938,
                45.195078710724744,
                0.09957717049720931,
                -1.318622941627214,
                0.11862294162721276,
            ),
            (
                (20, 0.0, 1.0),
                (20, 0.5, 1.0),
                0.5,
                1.5811388300841895,
                38.0,
                0.1221351574481616,
                -0.14016964399140652,
                1.1401696439914066,
            ),
        ];
        for &(c, a, difference, t, df, p, low, high) in rows {
            let got = welch(&summary(c.0, c.1, c.2), &summary(a.0, a.1, a.2));
            let label = format!("{c:?} {a:?}: {got:?}");
            assert!(close(got.difference.unwrap(), difference, 1e-12), "{label}");
            assert!(close(got.t.unwrap(), t, 1e-12), "{label}");
            assert!(close(got.df.unwrap(), df, 1e-12), "{label}");
            assert!(close(got.p_value.unwrap(), p, 1e-9), "{label}");
            let (got_low, got_high) = got.ci95.unwrap();
            assert!(
                close(got_low, low, 1e-9) && close(got_high, high, 1e-9),
                "{label}"
            );
            if c.1 != 0.0 {
                assert!(close(
                    got.relative_difference.unwrap(),
                    difference / c.1,
                    1e-12
                ));
            }
        }
    }

    /// scipy's `t.ppf(0.975, df)` and `2 * t.sf(t, df)` across the range, including past
    /// where statrs' own inverse and continued fraction drift.
    #[test]
    fn t_quantile_and_tail_match_scipy() {
        let quantiles: &[(f64, f64)] = &[
            (1.0, 12.706204736174694),
            (2.0, 4.302652729749462),
            (3.0, 3.1824463052837078),
            (5.0, 2.5705818356363146),
            (10.0, 2.228138851986274),
            (30.0, 2.0422724563012378),
            (100.0, 1.9839715185235518),
            (1000.0, 1.9623390808264083),
            (1e4, 1.960201239890626),
            (1e5, 1.9599877075346095),
            (1e6, 1.959966356814107),
            (1e7, 1.959964221767205),
            (1e9, 1.959963986912325),
            (1e12, 1.9599639845424262),
            (1e15, 1.9599639845400563),
        ];
        for &(df, expected) in quantiles {
            let got = t_quantile_975(df).unwrap();
            assert!(close(got, expected, 1e-12), "df {df}: {got} vs {expected}");
        }
        // (df, [2 P(T > t) for t = 0.5, 1.96, 3, 6]).
        let tails: &[(f64, [f64; 4])] = &[
            (
                1.0,
                [
                    0.7048327646991335,
                    0.3003428917760331,
                    0.20483276469913345,
                    0.10513691342250688,
                ],
            ),
            (
                3.0,
                [
                    0.651447964848151,
                    0.14485220856485365,
                    0.0576688856224373,
                    0.009272714892284666,
                ],
            ),
            (
                30.0,
                [
                    0.6207230048851272,
                    0.05934231289605049,
                    0.005389964065651945,
                    1.3942768767204764e-06,
                ],
            ),
            (
                1e4,
                [
                    0.6170860793232337,
                    0.05002352023183303,
                    0.002706448189997666,
                    2.0416184729226213e-09,
                ],
            ),
            (
                1e5,
                [
                    0.6170761776544179,
                    0.04999856319430168,
                    0.0027004608840647234,
                    1.9799294556017718e-09,
                ],
            ),
            (
                1e6,
                [
                    0.6170751874723714,
                    0.04999606758526985,
                    0.0026998625414218,
                    1.97384981235443e-09,
                ],
            ),
            (
                1e9,
                [
                    0.6170750775619943,
                    0.049995790573729625,
                    0.002699796129737913,
                    1.9731759644984813e-09,
                ],
            ),
            (
                1e15,
                [
                    0.617075077451974,
                    0.04999579029644117,
                    0.0026997960632602525,
                    1.973175290076059e-09,
                ],
            ),
        ];
        for &(df, expected) in tails {
            for (t, p) in [0.5, 1.96, 3.0, 6.0].into_iter().zip(expected) {
                let got = t_two_sided_tail(t, df).unwrap();
                assert!(close(got, p, 1e-7), "df {df} t {t}: {got} vs {p}");
                assert_eq!(t_two_sided_tail(-t, df), Some(got));
            }
        }
        assert_eq!(t_two_sided_tail(0.0, 7.0), Some(1.0));
        assert_eq!(t_two_sided_tail(1e200, 7.0), Some(0.0));
        assert_eq!(t_two_sided_tail(1e200, 1e9), Some(0.0));
    }

    #[test]
    fn summary_from_sums() {
        let values = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        let sum: f64 = values.iter().sum();
        let sum_squares: f64 = values.iter().map(|x| x * x).sum();
        let s = Summary::from_sums(8, sum, sum_squares);
        assert_eq!(s.mean, 5.0);
        assert!(close(s.variance, 32.0 / 7.0, 1e-14));
        assert!(close(s.stddev().unwrap(), (32.0f64 / 7.0).sqrt(), 1e-14));
        // All equal: Σx² - (Σx)²/n may round below zero; the variance is 0.
        let s = Summary::from_sums(3, 3.0 * 0.1, 3.0 * 0.1 * 0.1);
        assert!(s.variance >= 0.0 && s.variance < 1e-15);
        assert_eq!(Summary::from_sums(0, 0.0, 0.0), Summary::default());
        assert_eq!(Summary::from_sums(1, 4.0, 16.0), summary(1, 4.0, 0.0));
        assert_eq!(Summary::from_sums(1, 4.0, 16.0).stddev(), None);
    }

    #[test]
    fn degenerate_comparisons_have_no_value_rather_than_nan() {
        let some = summary(10, 2.0, 1.0);
        // No sample in an arm: nothing.
        assert_eq!(welch(&summary(0, 0.0, 0.0), &some), Comparison::default());
        assert_eq!(welch(&some, &summary(0, 0.0, 0.0)), Comparison::default());
        // One sample: a difference, no test.
        let one = welch(&some, &summary(1, 3.0, 0.0));
        assert_eq!(one.difference, Some(1.0));
        assert_eq!(one.relative_difference, Some(0.5));
        assert_eq!(
            (one.t, one.df, one.p_value, one.ci95),
            (None, None, None, None)
        );
        // No variance in either arm: a difference, no test.
        let flat = welch(&summary(5, 1.0, 0.0), &summary(5, 2.0, 0.0));
        assert_eq!(flat.difference, Some(1.0));
        assert_eq!((flat.t, flat.p_value, flat.ci95), (None, None, None));
        // Control mean 0: no relative difference.
        let zero = welch(&summary(10, 0.0, 1.0), &some);
        assert_eq!(zero.relative_difference, None);
        assert!(zero.p_value.is_some());
        // Equal arms: t 0, p 1.
        let same = welch(&some, &some);
        assert_eq!(
            (same.difference, same.t, same.p_value),
            (Some(0.0), Some(0.0), Some(1.0))
        );
        // Input that is not finite.
        for bad in [f64::NAN, f64::INFINITY, -f64::INFINITY] {
            assert_eq!(welch(&summary(10, bad, 1.0), &some), Comparison::default());
            let c = welch(&summary(10, 1.0, bad), &some);
            assert_eq!(c.difference, Some(1.0));
            assert_eq!((c.t, c.p_value, c.ci95), (None, None, None));
        }
        let json = serde_json::to_string(&flat).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"difference":1.0,"relative_difference":1.0,"#,
                r#""ci95":null,"t":null,"df":null,"p_value":null}"#
            )
        );
    }

    /// Expected values from scipy's `chisquare(observed, f_exp)` with `f_exp` the total spread
    /// by the weights.
    #[test]
    fn sample_ratio_matches_scipy() {
        let rows: &[(&[u64], &[f64], f64, f64)] = &[
            (
                &[50000, 50500],
                &[50.0, 50.0],
                2.487562189054726,
                0.11474934170731495,
            ),
            (
                &[1000, 1100, 900],
                &[1.0, 1.0, 1.0],
                20.0,
                4.539992976248486e-05,
            ),
            (
                &[5000, 5200],
                &[0.5, 0.5],
                3.9215686274509802,
                0.0476703806561615,
            ),
            (
                &[100, 200],
                &[1.0, 1.0],
                33.333333333333336,
                7.764036537930667e-09,
            ),
            (
                &[3, 20],
                &[1.0, 1.0],
                12.565217391304348,
                0.00039299302641488125,
            ),
            (&[2100, 7900], &[20.0, 80.0], 6.25, 0.01241933065155227),
            (
                &[10, 10, 10, 10],
                &[1.0, 2.0, 3.0, 4.0],
                12.083333333333334,
                0.007103079660207908,
            ),
        ];
        for &(observed, weights, chi_squared, p) in rows {
            let got = sample_ratio(observed, weights);
            assert!(
                close(got.chi_squared.unwrap(), chi_squared, 1e-12),
                "{observed:?} {got:?}"
            );
            assert!(close(got.p_value.unwrap(), p, 1e-9), "{observed:?} {got:?}");
            assert_eq!(got.df, Some(observed.len() as u32 - 1));
        }
    }

    #[test]
    fn sample_ratio_flags_a_small_p_only_once_every_arm_has_8_units() {
        assert!(sample_ratio(&[100, 200], &[1.0, 1.0]).flagged);
        assert!(sample_ratio(&[1000, 1100, 900], &[1.0, 1.0, 1.0]).flagged);
        // p = 0.0004, but one arm has 3 units.
        let early = sample_ratio(&[3, 20], &[1.0, 1.0]);
        assert!(early.p_value.unwrap() < SAMPLE_RATIO_P_VALUE_MAX && !early.flagged);
        assert!(!sample_ratio(&[50000, 50500], &[50.0, 50.0]).flagged);
        // On the weights exactly: chi-squared 0, p 1.
        let exact = sample_ratio(&[500, 500], &[1.0, 1.0]);
        assert_eq!(
            (exact.chi_squared, exact.p_value, exact.flagged),
            (Some(0.0), Some(1.0), false)
        );
    }

    #[test]
    fn degenerate_sample_ratios_have_no_value() {
        let none = SampleRatio::default();
        assert_eq!(sample_ratio(&[], &[]), none);
        assert_eq!(sample_ratio(&[10], &[1.0]), none);
        assert_eq!(sample_ratio(&[10, 10], &[1.0]), none);
        assert_eq!(sample_ratio(&[0, 0], &[1.0, 1.0]), none);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(sample_ratio(&[10, 10], &[1.0, bad]), none);
        }
        assert_eq!(sample_ratio(&[10, 10], &[f64::MAX, f64::MAX]), none);
        // All units in one arm of two: a huge statistic, p 0, flagged only with 8 in each.
        let lopsided = sample_ratio(&[u64::MAX / 2, 0], &[1.0, 1.0]);
        assert_eq!(lopsided.p_value, Some(0.0));
        assert!(!lopsided.flagged);
    }

    fn all_finite(c: &Comparison) -> bool {
        let values = [c.difference, c.relative_difference, c.t, c.df, c.p_value];
        values.iter().flatten().all(|x| x.is_finite())
            && c.ci95
                .is_none_or(|(low, high)| low.is_finite() && high.is_finite() && low <= high)
            && c.p_value.is_none_or(|p| (0.0..=1.0).contains(&p))
    }

    proptest::proptest! {
        #[test]
        fn welch_never_panics_nor_leaks_nan(
            nc in 0u64..1_000_000_000, na in 0u64..1_000_000_000,
            mc in proptest::num::f64::ANY, ma in proptest::num::f64::ANY,
            vc in proptest::num::f64::ANY, va in proptest::num::f64::ANY,
        ) {
            let c = welch(&summary(nc, mc, vc), &summary(na, ma, va));
            proptest::prop_assert!(all_finite(&c), "{:?}", c);
            serde_json::to_string(&c).unwrap();
        }

        #[test]
        fn sample_ratio_never_panics_nor_leaks_nan(
            observed in proptest::collection::vec(proptest::num::u64::ANY, 0..6),
            weights in proptest::collection::vec(proptest::num::f64::ANY, 0..6),
        ) {
            let s = sample_ratio(&observed, &weights);
            proptest::prop_assert!(s.chi_squared.is_none_or(f64::is_finite));
            proptest::prop_assert!(s.p_value.is_none_or(|p| (0.0..=1.0).contains(&p)));
        }
    }
}
