//! Pre-activation Wide-ResNet WRN-depth-width, as in docs/method.md §1.
//!
//! conv3x3(in→16) → 3 groups of n = (depth−4)/6 blocks of widths 16k·{1,2,4}, strides 1,2,2 →
//! norm → LeakyReLU → global average pool → linear. Every conv carries a bias. The global
//! average pool makes the net size-agnostic (28×28 digits, 32×32 CIFAR).
use crate::config::{ModelConfig, NormKind, Precision};
use crate::{engine, shim};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// How normalisation and dropout behave in a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Batch statistics, running statistics updated, dropout on.
    Train,
    /// Batch statistics, running statistics left alone (SAM's second pass), dropout on.
    TrainFrozenStats,
    /// Running statistics, dropout off.
    Eval,
}

/// Batch norm with the momentum in PyTorch's convention:
/// `running ← (1 − momentum)·running + momentum·batch`.
/// (The reference passes 0.9, i.e. the running statistics mostly follow the last batch.)
#[derive(Debug)]
struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    momentum: f64,
}

impl BatchNorm {
    fn new(p: nn::Path, channels: i64, momentum: f64) -> Self {
        BatchNorm {
            weight: p.ones("weight", &[channels]),
            bias: p.zeros("bias", &[channels]),
            running_mean: p.zeros_no_train("running_mean", &[channels]),
            running_var: p.ones_no_train("running_var", &[channels]),
            momentum,
        }
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        let (mean, var, training) = match mode {
            Mode::Train => (Some(&self.running_mean), Some(&self.running_var), true),
            // Without running tensors ATen normalises by batch statistics and updates nothing.
            Mode::TrainFrozenStats => (None, None, true),
            Mode::Eval => (Some(&self.running_mean), Some(&self.running_var), false),
        };
        Tensor::batch_norm(x, Some(&self.weight), Some(&self.bias), mean, var, training, self.momentum, 1e-5, false)
    }
}

#[derive(Debug)]
struct Norm(Option<BatchNorm>);

impl Norm {
    fn new(p: nn::Path, channels: i64, cfg: &ModelConfig) -> Self {
        Norm(match cfg.norm {
            NormKind::None => None,
            NormKind::Batch => Some(BatchNorm::new(p, channels, cfg.bn_momentum)),
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        match &self.0 {
            Some(bn) => bn.forward(x, mode),
            None => x.shallow_clone(),
        }
    }
}

/// PyTorch's default initialisation of conv and linear layers (what the reference trains
/// from): weights and biases uniform in ±1/√fan_in. tch's default (He, bias 0) is √6× wider.
fn torch_default_init(fan_in: i64) -> nn::Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform { lo: -bound, up: bound }
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64) -> nn::Conv2D {
    let init = torch_default_init(cin * k * k);
    let cfg = nn::ConvConfig { stride, padding: k / 2, bias: true, ws_init: init, bs_init: init, ..Default::default() };
    nn::conv2d(p, cin, cout, k, cfg)
}

#[derive(Debug)]
struct Block {
    bn1: Norm,
    conv1: nn::Conv2D,
    bn2: Norm,
    conv2: nn::Conv2D,
    /// 1×1 strided conv when the shape changes, identity otherwise.
    shortcut: Option<nn::Conv2D>,
}

impl Block {
    fn new(p: &nn::Path, cin: i64, cout: i64, stride: i64, cfg: &ModelConfig) -> Self {
        let shortcut = (stride != 1 || cin != cout).then(|| conv(p / "shortcut", cin, cout, 1, stride));
        Block {
            bn1: Norm::new(p / "bn1", cin, cfg),
            conv1: conv(p / "conv1", cin, cout, 3, 1),
            bn2: Norm::new(p / "bn2", cout, cfg),
            conv2: conv(p / "conv2", cout, cout, 3, stride),
            shortcut,
        }
    }
}

/// The classifier f(x) ∈ R^C whose logits the energy view reads.
#[derive(Debug)]
pub struct Wrn {
    conv1: nn::Conv2D,
    blocks: Vec<Block>,
    bn: Norm,
    class_output: nn::Linear,
    slope: f64,
    dropout: f64,
    precision: Precision,
    channels_last: bool,
}

impl Wrn {
    /// `cfg` is validated beforehand (`ModelConfig::validate`): depth = 6n + 4.
    pub fn new(p: &nn::Path, cfg: &ModelConfig, in_channels: i64, num_classes: i64) -> Self {
        let n = (cfg.depth - 4) / 6;
        let widths = [16, 16 * cfg.widen, 32 * cfg.widen, 64 * cfg.widen];
        let mut blocks = Vec::new();
        let mut cin = widths[0];
        for (g, (&cout, stride)) in widths[1..].iter().zip([1, 2, 2]).enumerate() {
            for b in 0..n {
                let path = p / format!("layer{}", g + 1) / b.to_string();
                blocks.push(Block::new(&path, cin, cout, if b == 0 { stride } else { 1 }, cfg));
                cin = cout;
            }
        }
        Wrn {
            conv1: conv(p / "conv1", in_channels, widths[0], 3, 1),
            blocks,
            bn: Norm::new(p / "bn1", cin, cfg),
            class_output: nn::linear(
                p / "class_output",
                cin,
                num_classes,
                nn::LinearConfig { ws_init: torch_default_init(cin), bs_init: Some(torch_default_init(cin)), bias: true },
            ),
            slope: cfg.slope,
            dropout: cfg.dropout,
            precision: Precision::Fp32,
            channels_last: false,
        }
    }

    /// How the passes compute (`train.precision`, resolved for `vs`'s device when `auto`;
    /// `train.channels_last`); `vs` holds this network's variables, whose convolution weights
    /// move to channels_last when asked.
    pub fn set_compute(&mut self, vs: &nn::VarStore, precision: Precision, channels_last: bool) {
        if channels_last {
            engine::make_channels_last(vs);
        }
        self.precision = engine::resolve_precision(precision, vs.device());
        self.channels_last = channels_last;
    }

    /// The precision forwards run in (never `auto`).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Logits f(x), fp32, for images scaled to [−1, 1]. Under bf16 each call is its own
    /// autocast region, so weights changed in place between calls (SAM) are cast afresh.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        let x = if self.channels_last { shim::channels_last(x) } else { x.shallow_clone() };
        match self.precision {
            Precision::Fp32 | Precision::Auto => self.forward_from_stem(&self.stem(&x), mode),
            Precision::Bf16 => engine::autocast_bf16(x.device(), || self.forward_from_stem(&self.stem(&x), mode)).to_kind(Kind::Float),
        }
    }

    /// The first conv alone: affine in x, which JEM++'s PYLD sampler exploits.
    pub fn stem(&self, x: &Tensor) -> Tensor {
        self.conv1.forward(x)
    }

    /// Everything after the first conv.
    pub fn forward_from_stem(&self, h: &Tensor, mode: Mode) -> Tensor {
        let act = |t: &Tensor| shim::leaky_relu(t, self.slope);
        let train = mode != Mode::Eval;
        let mut out = h.shallow_clone();
        for b in &self.blocks {
            let pre = act(&b.bn1.forward(&out, mode));
            let mut y = b.conv1.forward(&pre).dropout(self.dropout, train);
            y = b.conv2.forward(&act(&b.bn2.forward(&y, mode)));
            out = y + match &b.shortcut {
                Some(s) => s.forward(&out),
                None => out.shallow_clone(),
            };
        }
        let feat = act(&self.bn.forward(&out, mode)).mean_dim(&[2i64, 3][..], false, None);
        self.class_output.forward(&feat)
    }
}

/// Floating-point operations of one forward pass on one `channels`×`height`×`width` image:
/// 2 per multiply-add of the convolutions and the linear layer (norms, activations and biases,
/// a few per cent, are left out) — what benchmarks divide by the time.
pub fn forward_flops(cfg: &ModelConfig, channels: i64, height: i64, width: i64, classes: i64) -> f64 {
    let conv = |cin: i64, cout: i64, k: i64, h: i64, w: i64| 2.0 * (cin * cout * k * k * h * w) as f64;
    let (mut h, mut w) = (height, width);
    let mut flops = conv(channels, 16, 3, h, w);
    let n = (cfg.depth - 4) / 6;
    let mut cin = 16;
    for (cout, stride) in [(16 * cfg.widen, 1), (32 * cfg.widen, 2), (64 * cfg.widen, 2)] {
        for b in 0..n {
            let s = if b == 0 { stride } else { 1 };
            // Padding 1 (3×3) or 0 (1×1): either way the output side is ⌈side / stride⌉.
            let (ho, wo) = ((h + s - 1) / s, (w + s - 1) / s);
            flops += conv(cin, cout, 3, h, w) + conv(cout, cout, 3, ho, wo);
            if s != 1 || cin != cout {
                flops += conv(cin, cout, 1, ho, wo);
            }
            (h, w, cin) = (ho, wo, cout);
        }
    }
    flops + 2.0 * (cin * classes) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    fn count(depth: i64, widen: i64, norm: NormKind, cin: i64, classes: i64) -> i64 {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let cfg = ModelConfig { depth, widen, norm, ..ModelConfig::default() };
        let _ = Wrn::new(&vs.root(), &cfg, cin, classes);
        vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
    }

    // WRN-28-10, 3 channels, 10 classes, batch norm, counted by hand from docs/method.md §1:
    // conv1 3·16·9+16 = 448.
    // group 1 (16→160): first block bn 2·16 + conv 16·160·9+160 + bn 2·160 + conv 160·160·9+160
    //   + shortcut 16·160+160 = 256,832; three more blocks 2·160+230,560+2·160+230,560 = 461,760
    //   each → 1,642,112.
    // group 2 (160→320): 320+461,120+640+921,920+51,520 = 1,435,520; three of
    //   640+921,920+640+921,920 = 1,845,120 → 6,970,880.
    // group 3 (320→640): 640+1,843,840+1,280+3,687,040+205,440 = 5,738,240; three of
    //   1,280+3,687,040+1,280+3,687,040 = 7,376,640 → 27,868,160.
    // head: bn 2·640 + linear 640·10+10 = 7,690.
    // Total 36,489,290 (the reference reports ≈ 36.5 M).
    #[test]
    fn wrn_28_10_parameter_count() {
        assert_eq!(count(28, 10, NormKind::Batch, 3, 10), 36_489_290);
    }

    /// WRN-28-10 on 32×32, by hand: conv1 3·16·9·1024 = 0.44 M multiply-adds; group 1 at 32×32:
    /// 16·160·9·1024 + 7·160·160·9·1024 + shortcut 16·160·1024 = 23.6 + 1,651.5 + 2.6 M; group 2:
    /// 160·320·9·1024 (the block's first conv runs before its stride) + 7·320·320·9·256 +
    /// 160·320·256 = 471.9 + 1,651.5 + 13.1 M; group 3: 320·640·9·256 + 7·640·640·9·64 +
    /// 320·640·64 = 471.9 + 1,651.5 + 13.1 M; linear 6,400. Sum 5,951.1 M (more than the 5.25 G
    /// usually quoted for WRN-28-10, whose blocks stride their first conv instead).
    #[test]
    fn wrn_28_10_forward_flops() {
        let cfg = ModelConfig { depth: 28, widen: 10, ..ModelConfig::default() };
        let f = forward_flops(&cfg, 3, 32, 32, 10);
        assert!((f / 2.0 - 5_951.1e6).abs() < 0.1e6, "{} M MAC", f / 2e6);
    }

    #[test]
    fn without_norm_only_the_norm_parameters_go() {
        // Norm channels: group g's first block has bn1 over its input, the other seven of its
        // norms are over its width; plus the head's norm over 640.
        let bn: i64 = 2 * (16 + 7 * 160 + 160 + 7 * 320 + 320 + 7 * 640 + 640);
        assert_eq!(count(28, 10, NormKind::None, 3, 10), 36_489_290 - bn);
    }

    #[test]
    fn shapes_for_28_and_32_pixel_inputs() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let cfg = ModelConfig { depth: 10, widen: 1, ..ModelConfig::default() };
        let net = Wrn::new(&vs.root(), &cfg, 1, 7);
        let y = net.forward(&Tensor::zeros([3, 1, 28, 28], (tch::Kind::Float, tch::Device::Cpu)), Mode::Eval);
        assert_eq!(y.size(), vec![3, 7]);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let net = Wrn::new(&vs.root(), &cfg, 3, 100);
        let y = net.forward(&Tensor::zeros([2, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu)), Mode::Train);
        assert_eq!(y.size(), vec![2, 100]);
    }

    #[test]
    fn bf16_and_channels_last_follow_fp32_closely_and_keep_gradients_fp32() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let cfg = ModelConfig { depth: 10, widen: 2, ..ModelConfig::default() };
        let mut net = Wrn::new(&vs.root(), &cfg, 3, 10);
        let x = Tensor::rand([8, 3, 32, 32], (Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0;
        let logits = |net: &Wrn| net.forward(&x, Mode::Eval);
        let fp32 = logits(&net);

        net.set_compute(&vs, Precision::Fp32, true);
        let nhwc = logits(&net);
        assert!(!vs.variables()["layer1.0.conv1.weight"].is_contiguous(), "weights moved to NHWC");
        // Same arithmetic, other summation order: float rounding only.
        assert!(nhwc.allclose(&fp32, 1e-4, 1e-5, false));

        net.set_compute(&vs, Precision::Bf16, true);
        let bf16 = logits(&net);
        assert_eq!(bf16.kind(), Kind::Float);
        let err = (&bf16 - &fp32).abs().max().double_value(&[]);
        let spread = fp32.std(true).double_value(&[]);
        // bf16 rounds every conv input to 8 mantissa bits: errors of ~1 % of the logits' spread,
        // nowhere near a wrong network (which would be off by the spread itself).
        assert!(err > 0.0 && err < 0.05 * spread, "bf16 logits off by {err} (spread {spread})");

        let xg = x.detach().set_requires_grad(true);
        let lse = crate::model::energy::lse(&net.forward(&xg, Mode::Train)).sum(None);
        lse.backward();
        assert_eq!(xg.grad().kind(), Kind::Float);
        assert!(vs.trainable_variables().iter().all(|p| p.kind() == Kind::Float && p.grad().kind() == Kind::Float));
    }

    #[test]
    fn frozen_stats_mode_leaves_running_statistics_alone() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let cfg = ModelConfig { depth: 10, widen: 1, ..ModelConfig::default() };
        let net = Wrn::new(&vs.root(), &cfg, 1, 10);
        let x = Tensor::randn([8, 1, 28, 28], (tch::Kind::Float, tch::Device::Cpu));
        let running = |vs: &nn::VarStore| vs.variables()["bn1.running_mean"].copy();
        let before = running(&vs);
        let _ = net.forward(&x, Mode::TrainFrozenStats);
        assert!(running(&vs).equal(&before));
        let _ = net.forward(&x, Mode::Train);
        assert!(!running(&vs).equal(&before));
    }
}
