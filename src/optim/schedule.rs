//! Learning rate: linear warm-up from 0 over the first iterations, then ×decay_rate at each
//! listed epoch (docs/method.md §4).
use crate::config::OptimConfig;

/// The rate for global iteration `iter` (0-based) inside epoch `epoch` (0-based). As in the
/// reference, the very first iteration runs at rate 0.
pub fn lr(cfg: &OptimConfig, iter: usize, epoch: usize) -> f64 {
    let warm = if iter < cfg.warmup_iters { iter as f64 / cfg.warmup_iters as f64 } else { 1.0 };
    let decays = cfg.decay_epochs.iter().filter(|&&e| epoch >= e).count();
    cfg.lr * warm * cfg.decay_rate.powi(decays as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_then_step_decay() {
        let cfg = OptimConfig { lr: 0.1, warmup_iters: 1000, decay_epochs: vec![60, 120, 180], decay_rate: 0.2, ..Default::default() };
        assert_eq!(lr(&cfg, 0, 0), 0.0);
        assert!((lr(&cfg, 500, 1) - 0.05).abs() < 1e-15);
        assert_eq!(lr(&cfg, 1000, 2), 0.1);
        assert_eq!(lr(&cfg, 50_000, 59), 0.1);
        assert!((lr(&cfg, 50_000, 60) - 0.02).abs() < 1e-15);
        assert!((lr(&cfg, 90_000, 199) - 0.1 * 0.008).abs() < 1e-15);
    }
}
