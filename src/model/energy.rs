//! The JEM reading of any classifier's logits f(x) (docs/method.md §1):
//! p(y|x) = softmax f(x), and p(x) ∝ exp(−E(x)) with E(x) = −logsumexp_y f(x)[y].

use tch::{Kind, Tensor};

/// logsumexp_y f(x)[y] per sample: the unnormalised log-density log p(x) + log Z.
pub fn lse(logits: &Tensor) -> Tensor {
    logits.logsumexp(&[1i64][..], false)
}

/// E(x) = −LSE(f(x)).
pub fn energy(logits: &Tensor) -> Tensor {
    -lse(logits)
}

/// log p(y|x) for every class, [N, C].
pub fn log_p_y_given_x(logits: &Tensor) -> Tensor {
    logits.log_softmax(1, Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hand_computed_values() {
        let f = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 1.0, 1.0, 1.0]).view([2, 3]);
        let l = Vec::<f32>::try_from(lse(&f)).unwrap();
        let expected0 = (1.0f32 + 1f32.exp() + 2f32.exp()).ln();
        let expected1 = 1.0 + 3f32.ln();
        assert!((l[0] - expected0).abs() < 1e-6 && (l[1] - expected1).abs() < 1e-6);
        assert_eq!(Vec::<f32>::try_from(energy(&f)).unwrap(), l.iter().map(|v| -v).collect::<Vec<_>>());
        let lp = Vec::<f32>::try_from(log_p_y_given_x(&f).view([-1])).unwrap();
        assert!((lp[2] - (2.0 - expected0)).abs() < 1e-6);
        assert!((lp[4] + 3f32.ln()).abs() < 1e-6);
    }
}
