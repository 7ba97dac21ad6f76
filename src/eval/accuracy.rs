//! Classification accuracy.

/// Fraction of `predicted` equal to `labels`.
pub fn accuracy(predicted: &[i64], labels: &[i64]) -> f64 {
    assert_eq!(predicted.len(), labels.len(), "one prediction per label");
    if labels.is_empty() {
        return 0.0;
    }
    let right = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    right as f64 / labels.len() as f64
}

/// The arg-max class of each row of logits [N, C].
pub fn argmax(logits: &tch::Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(logits.argmax(1, false)).expect("logits are [N, C]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_matches() {
        assert_eq!(accuracy(&[1, 2, 3, 4], &[1, 0, 3, 0]), 0.5);
        let l = tch::Tensor::from_slice(&[0.1f32, 0.9, 0.8, 0.2]).view([2, 2]);
        assert_eq!(argmax(&l), vec![1, 0]);
    }
}
