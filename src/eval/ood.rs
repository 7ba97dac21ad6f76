//! Out-of-distribution detection: how well a score separates in-distribution inputs (the
//! positives, expected to score higher) from OOD ones. AUROC counts ties as one half, like
//! scikit-learn's `roc_auc_score`; FPR95 is the false-positive rate at the first threshold whose
//! true-positive rate reaches 95 %.

/// Every score with whether it is in-distribution.
fn labelled(scores_in: &[f64], scores_out: &[f64]) -> Vec<(f64, bool)> {
    scores_in.iter().map(|&s| (s, true)).chain(scores_out.iter().map(|&s| (s, false))).collect()
}

/// Area under the ROC curve = P(score_in > score_out) + ½·P(equal), by the rank-sum
/// (Mann–Whitney) identity with average ranks for ties. NaN if either set is empty.
pub fn auroc(scores_in: &[f64], scores_out: &[f64]) -> f64 {
    let (p, n) = (scores_in.len(), scores_out.len());
    if p == 0 || n == 0 {
        return f64::NAN;
    }
    let mut all = labelled(scores_in, scores_out);
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum_in = 0.0;
    let mut start = 0;
    while start < all.len() {
        let mut end = start;
        while end + 1 < all.len() && all[end + 1].0 == all[start].0 {
            end += 1;
        }
        // Ranks start..=end (1-based: start+1..=end+1) share their average.
        let avg = (start + end) as f64 / 2.0 + 1.0;
        rank_sum_in += avg * all[start..=end].iter().filter(|x| x.1).count() as f64;
        start = end + 1;
    }
    (rank_sum_in - (p * (p + 1)) as f64 / 2.0) / (p as f64 * n as f64)
}

/// False-positive rate at 95 % true-positive rate: sweeping the threshold down over the distinct
/// scores, the FPR at the first point where TPR ≥ 0.95 (scikit-learn's `roc_curve` with
/// `drop_intermediate=False`, then the first index with tpr ≥ 0.95).
pub fn fpr_at_tpr(scores_in: &[f64], scores_out: &[f64], tpr_target: f64) -> f64 {
    let (p, n) = (scores_in.len(), scores_out.len());
    if p == 0 || n == 0 {
        return f64::NAN;
    }
    let mut all = labelled(scores_in, scores_out);
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < all.len() {
        // Everything with this score is accepted at once.
        let s = all[i].0;
        while i < all.len() && all[i].0 == s {
            if all[i].1 {
                tp += 1
            } else {
                fp += 1
            }
            i += 1;
        }
        if tp as f64 / p as f64 >= tpr_target {
            return fp as f64 / n as f64;
        }
    }
    1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separated_reversed_and_tied() {
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auroc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        assert_eq!(auroc(&[1.0, 1.0], &[1.0]), 0.5);
        // Pairs (in, out): (2,1) win, (2,2) tie, (0,1) loss, (0,2) loss → 1.5 / 4.
        assert_eq!(auroc(&[2.0, 0.0], &[1.0, 2.0]), 0.375);
        assert!(auroc(&[], &[1.0]).is_nan());
    }

    #[test]
    fn fpr95_hand_computed() {
        // 20 positives 1..=20, negatives at 15.5 and 0.5: TPR reaches 0.95 (19 of 20) at
        // threshold 2, where one negative (15.5) is accepted.
        let pos: Vec<f64> = (1..=20).map(|v| v as f64).collect();
        assert_eq!(fpr_at_tpr(&pos, &[15.5, 0.5], 0.95), 0.5);
        // Ties between the sets are accepted together.
        assert_eq!(fpr_at_tpr(&[1.0], &[1.0, 0.0], 0.95), 0.5);
    }

    #[test]
    fn matches_scikit_learn_with_ties() {
        use crate::eval::reference::{close, get, vec};
        let r = get("ood");
        let (s_in, s_out) = (vec(&r["scores_in"]), vec(&r["scores_out"]));
        let (a, f) = (auroc(&s_in, &s_out), fpr_at_tpr(&s_in, &s_out, 0.95));
        assert!(close(a, r["auroc"].as_f64().unwrap(), 1e-6), "AUROC {a} vs {}", r["auroc"]);
        assert!(close(f, r["fpr95"].as_f64().unwrap(), 1e-6), "FPR95 {f} vs {}", r["fpr95"]);
    }

}
