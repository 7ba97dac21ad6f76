//! Data-parallel training over PyTorch's c10d engine (TCPStore rendezvous, the Gloo or NCCL
//! backend; the shim's `Group`): the world a worker belongs to, read from the variables
//! torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK), and
//! `sadajem train --nproc N`'s launcher, which starts N such workers and supervises them.
//!
//! The backend (`train.backend`): NCCL all-reduces CUDA workers' gradients and buffers where
//! they are, in GPU memory; Gloo works in host memory, so GPU tensors are copied to the host
//! and back around each collective (which is what lets several workers share one GPU).
//!
//! The semantics (README, "Several workers"):
//! - every worker reads the same seeded, per-epoch reshuffled stream of global batches of
//!   nproc × `data.batch_size` images, augments all of it with the shared augmentation stream,
//!   and trains on its own slice: so nproc workers × batch b see exactly what one worker × batch
//!   nproc·b sees;
//! - each worker samples from its own replay-buffer shard (`sampler.buffer_size` / nproc) with
//!   its own libtorch random stream;
//! - both SAM passes' gradients are averaged over the workers (flattened buckets, all-reduce);
//!   batch-norm batch statistics are each worker's own, and the running statistics are rank 0's,
//!   broadcast at the start of every iteration (DistributedDataParallel's default);
//! - rank 0 alone writes metrics, samples and checkpoints; a checkpoint holds the whole buffer
//!   (the shards in rank order) and every worker's random-generator state.
use crate::config::Backend;
use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

/// Gradients are averaged in flat buckets of at most this many bytes (DDP's default 25 MiB):
/// few collective calls, bounded extra memory.
const BUCKET_BYTES: i64 = 25 << 20;

/// Seconds a collective call waits for the others before failing.
const TIMEOUT_S: u32 = 600;

pub struct World {
    pub rank: usize,
    pub size: usize,
    /// Where collective calls want their tensors: the host for Gloo, the worker's GPU for NCCL.
    comm: Device,
    #[cfg(sadajem_distributed)]
    group: Option<crate::shim::Group>,
}

/// Whether this build has the NCCL backend (the CUDA build: build.rs found nccl.h).
pub const NCCL_AVAILABLE: bool = cfg!(sadajem_nccl);

/// What `train.backend` means for a worker on `device`: `Gloo` or `Nccl`, never `Auto`; NCCL
/// on a CPU device, or in a build without it, is an error naming the setting.
pub fn resolve_backend(backend: Backend, device: Device) -> Result<Backend> {
    match backend {
        Backend::Auto if device.is_cuda() && NCCL_AVAILABLE => Ok(Backend::Nccl),
        Backend::Auto | Backend::Gloo => Ok(Backend::Gloo),
        Backend::Nccl if !device.is_cuda() => {
            bail!("train.backend = nccl needs CUDA workers (train.device = cuda or cuda:N); use gloo or auto on the CPU")
        }
        Backend::Nccl if !NCCL_AVAILABLE => bail!(
            "train.backend = nccl, but this sadajem was built without NCCL: build it against the CUDA libtorch \
             (`make build-cuda`, README \"GPU\"), or use train.backend = gloo"
        ),
        Backend::Nccl => Ok(Backend::Nccl),
    }
}

/// The variables a launcher (ours, torchrun, srun via a wrapper) sets for each worker.
#[derive(Debug, PartialEq)]
pub struct Env {
    pub rank: usize,
    pub world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl Env {
    /// None when WORLD_SIZE is unset, or 1 without `keep_one` (a single process).
    pub fn parse(get: impl Fn(&str) -> Option<String>, keep_one: bool) -> Result<Option<Env>> {
        let num = |key: &str| -> Result<Option<usize>> {
            get(key).map(|v| v.trim().parse::<usize>().with_context(|| format!("{key}=`{v}`: expected a non-negative integer"))).transpose()
        };
        let world_size = match num("WORLD_SIZE")? {
            None => return Ok(None),
            Some(1) if !keep_one => return Ok(None),
            Some(0) => bail!("WORLD_SIZE=0: expected at least 1 worker"),
            Some(n) => n,
        };
        let rank = num("RANK")?.context("WORLD_SIZE is set but RANK is not: set RANK (0..WORLD_SIZE-1) for each worker")?;
        if rank >= world_size {
            bail!("RANK={rank} with WORLD_SIZE={world_size}: expected 0..={}", world_size - 1);
        }
        let master_addr = get("MASTER_ADDR").context("WORLD_SIZE is set but MASTER_ADDR is not: the address of rank 0's machine")?;
        let port = get("MASTER_PORT").context("WORLD_SIZE is set but MASTER_PORT is not: a free TCP port on rank 0's machine")?;
        let master_port = port.trim().parse::<u16>().with_context(|| format!("MASTER_PORT=`{port}`: expected a TCP port (1-65535)"))?;
        Ok(Some(Env { rank, world_size, master_addr, master_port }))
    }
}

impl World {
    /// One process, no collectives.
    pub fn single() -> World {
        World {
            rank: 0,
            size: 1,
            comm: Device::Cpu,
            #[cfg(sadajem_distributed)]
            group: None,
        }
    }

    /// The world the environment describes for a worker on `device` with `train.backend`
    /// `backend`: a single process when WORLD_SIZE is unset, or 1 with backend `auto` (an
    /// explicit backend forms a group of one, which checks that backend). Joins the process
    /// group, which waits until every worker has joined.
    pub fn from_env(backend: Backend, device: Device) -> Result<World> {
        let resolved = resolve_backend(backend, device)?;
        let Some(env) = Env::parse(|k| std::env::var(k).ok(), backend != Backend::Auto)? else {
            return Ok(World::single());
        };
        Self::join(&env, resolved, device)
    }

    #[cfg(sadajem_distributed)]
    fn join(env: &Env, backend: Backend, device: Device) -> Result<World> {
        let (comm, nccl_gpu) = match (backend, device) {
            (Backend::Nccl, Device::Cuda(i)) => (device, Some(i)),
            _ => (Device::Cpu, None),
        };
        let group = crate::shim::Group::new(&env.master_addr, env.master_port, env.rank, env.world_size, TIMEOUT_S, nccl_gpu).with_context(|| {
            format!("rank {} joining {} workers at {}:{} ({backend:?})", env.rank, env.world_size, env.master_addr, env.master_port)
        })?;
        Ok(World { rank: env.rank, size: env.world_size, comm, group: Some(group) })
    }

    #[cfg(not(sadajem_distributed))]
    fn join(env: &Env, _: Backend, _: Device) -> Result<World> {
        bail!(
            "WORLD_SIZE={} asks for data-parallel training, but this sadajem was built without Gloo's headers \
             (run scripts/setup-libtorch.sh, which fetches them, or set SADAJEM_GLOO_INCLUDE, then rebuild)",
            env.world_size
        )
    }

    pub fn is_primary(&self) -> bool {
        self.rank == 0
    }

    /// No process group: nothing collective to do (a world of one joined explicitly is not
    /// single: its collectives run, as a check of the backend).
    pub fn is_single(&self) -> bool {
        self.group().is_none()
    }

    /// The backend this world's collectives use (None without a group).
    pub fn backend(&self) -> Option<Backend> {
        self.group().map(|_| if self.comm.is_cuda() { Backend::Nccl } else { Backend::Gloo })
    }

    /// The group, for a world of more than one worker.
    #[cfg(sadajem_distributed)]
    fn group(&self) -> Option<&crate::shim::Group> {
        self.group.as_ref()
    }

    #[cfg(not(sadajem_distributed))]
    fn group(&self) -> Option<&NoGroup> {
        None
    }

    /// Replaces every parameter's gradient by its mean over the workers.
    pub fn average_gradients(&self, params: &[Tensor]) {
        let Some(g) = self.group() else { return };
        let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).filter(|g| g.defined()).collect();
        for bucket in buckets(&grads) {
            let flat = Tensor::cat(&bucket.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(), 0);
            // The same tensor when it is already where the backend works (NCCL, or Gloo on CPU).
            let comm = flat.to_device(self.comm);
            g.allreduce_sum_(&comm).expect("all-reduce of the gradients (did another worker stop?)");
            let mean = comm.to_device(flat.device()) / self.size as f64;
            let mut offset = 0;
            tch::no_grad(|| {
                for t in &bucket {
                    let n = t.numel() as i64;
                    let mut t = t.shallow_clone();
                    t.copy_(&mean.narrow(0, offset, n).view_as(&t));
                    offset += n;
                }
            });
        }
    }

    /// Overwrites each tensor with rank 0's (in one flat message per kind).
    pub fn broadcast_from_primary(&self, tensors: &[Tensor]) {
        let Some(g) = self.group() else { return };
        // One message per kind, kinds in order of first appearance (the same on every worker).
        let mut kinds: Vec<Kind> = vec![];
        for t in tensors {
            if !kinds.contains(&t.kind()) {
                kinds.push(t.kind());
            }
        }
        for kind in kinds {
            let same: Vec<&Tensor> = tensors.iter().filter(|t| t.kind() == kind).collect();
            let flat = Tensor::cat(&same.iter().map(|t| t.reshape([-1]).to_device(self.comm)).collect::<Vec<_>>(), 0);
            g.broadcast_(&flat, 0).expect("broadcast from rank 0 (did another worker stop?)");
            let mut offset = 0;
            tch::no_grad(|| {
                for t in same {
                    let n = t.numel() as i64;
                    let mut t = t.shallow_clone();
                    t.copy_(&flat.narrow(0, offset, n).view_as(&t).to_device(t.device()));
                    offset += n;
                }
            });
        }
    }

    /// Every worker's `t` (same shape everywhere), stacked by rank; `t` alone in a single process.
    pub fn gather(&self, t: &Tensor) -> Tensor {
        match self.group() {
            None => t.unsqueeze(0),
            Some(g) => g.allgather(&t.to_device(self.comm)).expect("all-gather (did another worker stop?)").to_device(t.device()),
        }
    }

    /// True on every worker when `flag` is true on any.
    pub fn any(&self, flag: bool) -> bool {
        let Some(g) = self.group() else { return flag };
        let t = Tensor::from_slice(&[flag as i64]).to_device(self.comm);
        g.allreduce_sum_(&t).expect("all-reduce (did another worker stop?)");
        t.int64_value(&[0]) > 0
    }

    /// Rank 0's value of `x` on every worker.
    pub fn broadcast_f64(&self, x: f64) -> f64 {
        let t = Tensor::from_slice(&[x]).to_device(self.comm);
        self.broadcast_from_primary(std::slice::from_ref(&t));
        t.double_value(&[0])
    }

    pub fn barrier(&self) {
        if let Some(g) = self.group() {
            g.barrier().expect("barrier (did another worker stop?)");
        }
    }
}

/// Stands in for the shim's group in a build without Gloo (never constructed).
#[cfg(not(sadajem_distributed))]
struct NoGroup;

#[cfg(not(sadajem_distributed))]
impl NoGroup {
    fn allreduce_sum_(&self, _: &Tensor) -> Result<(), tch::TchError> {
        unreachable!()
    }
    fn broadcast_(&self, _: &Tensor, _: usize) -> Result<(), tch::TchError> {
        unreachable!()
    }
    fn allgather(&self, _: &Tensor) -> Result<Tensor, tch::TchError> {
        unreachable!()
    }
    fn barrier(&self) -> Result<(), tch::TchError> {
        unreachable!()
    }
}

/// Consecutive runs of same-kind tensors of at most BUCKET_BYTES each (a larger tensor alone).
fn buckets(tensors: &[Tensor]) -> Vec<Vec<Tensor>> {
    let mut out: Vec<Vec<Tensor>> = vec![];
    let mut bytes = 0;
    for t in tensors {
        let size = t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        let fits = out.last().is_some_and(|b| b[0].kind() == t.kind() && bytes + size <= BUCKET_BYTES);
        if fits {
            out.last_mut().unwrap().push(t.shallow_clone());
            bytes += size;
        } else {
            out.push(vec![t.shallow_clone()]);
            bytes = size;
        }
    }
    out
}

/// The slice of a global batch that worker `rank` of `size` trains on.
pub fn my_slice<T>(global: &[T], rank: usize, size: usize) -> &[T] {
    let per = global.len() / size;
    &global[rank * per..(rank + 1) * per]
}

/// `sadajem train --nproc N`: runs this program N times with `args` (the train command line
/// without `--nproc`) and the worker variables set, rank 0's output on the console and the others'
/// errors; when a worker fails, stops the rest and says which rank failed and how.
pub fn launch(nproc: usize, args: &[String]) -> Result<()> {
    use std::process::{Command, Stdio};
    let nnodes: usize = env_or("NNODES", 1)?;
    let node_rank: usize = env_or("NODE_RANK", 0)?;
    if node_rank >= nnodes {
        bail!("NODE_RANK={node_rank} with NNODES={nnodes}: expected 0..={}", nnodes - 1);
    }
    let addr = std::env::var("MASTER_ADDR").unwrap_or_else(|_| "127.0.0.1".into());
    let port = match std::env::var("MASTER_PORT") {
        Ok(p) => p,
        Err(_) if nnodes == 1 => free_port()?.to_string(),
        Err(_) => bail!("NNODES={nnodes}: set MASTER_PORT (and MASTER_ADDR) to the same values on every node"),
    };
    let world = nproc * nnodes;
    let exe = std::env::current_exe().context("finding the sadajem executable")?;
    let mut children = vec![];
    for local in 0..nproc {
        let rank = node_rank * nproc + local;
        let child = Command::new(&exe)
            .args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", &addr)
            .env("MASTER_PORT", &port)
            .stdout(if rank == 0 { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .with_context(|| format!("starting worker {rank}"))?;
        children.push((rank, child));
    }
    supervise(children)
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> Result<T> {
    match std::env::var(key) {
        Ok(v) => v.trim().parse().map_err(|_| anyhow::anyhow!("{key}=`{v}`: expected a non-negative integer")),
        Err(_) => Ok(default),
    }
}

/// A port the OS reports free on the loopback (for a one-machine job).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port for the workers' rendezvous")?;
    Ok(l.local_addr()?.port())
}

/// Waits for every worker; the first that fails stops the others (SIGTERM, then SIGKILL after
/// a grace period) and fails the job naming its rank.
fn supervise(mut children: Vec<(usize, std::process::Child)>) -> Result<()> {
    const GRACE: std::time::Duration = std::time::Duration::from_secs(10);
    loop {
        let mut failed = None;
        children.retain_mut(|(rank, child)| match child.try_wait() {
            Ok(Some(status)) if status.success() => false,
            Ok(Some(status)) => {
                failed.get_or_insert((*rank, describe(status)));
                false
            }
            Ok(None) => true,
            Err(e) => {
                failed.get_or_insert((*rank, format!("could not be waited for ({e})")));
                false
            }
        });
        if let Some((rank, how)) = failed {
            for (_, child) in &children {
                // SAFETY: kill with a pid we spawned and have not reaped.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            }
            let deadline = std::time::Instant::now() + GRACE;
            for (_, child) in &mut children {
                while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            bail!("worker {rank} {how}; stopped the other workers. `sadajem train --nproc N --resume RUN_DIR` continues from the last checkpoint");
        }
        if children.is_empty() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => format!("ended ({status})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn worker_variables_are_read_and_checked() {
        assert_eq!(Env::parse(env(&[]), false).unwrap(), None);
        assert_eq!(Env::parse(env(&[]), true).unwrap(), None);
        assert_eq!(Env::parse(env(&[("WORLD_SIZE", "1")]), false).unwrap(), None);
        let e = Env::parse(env(&[("WORLD_SIZE", "4"), ("RANK", "3"), ("MASTER_ADDR", "node0"), ("MASTER_PORT", "29500")]), false).unwrap();
        assert_eq!(e, Some(Env { rank: 3, world_size: 4, master_addr: "node0".into(), master_port: 29500 }));
        // A world of one kept (an explicit backend): it needs the same variables as any other.
        let one = [("WORLD_SIZE", "1"), ("RANK", "0"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")];
        assert_eq!(Env::parse(env(&one), true).unwrap(), Some(Env { rank: 0, world_size: 1, master_addr: "h".into(), master_port: 1 }));
        assert!(Env::parse(env(&[("WORLD_SIZE", "1")]), true).unwrap_err().to_string().contains("RANK"));
        for (pairs, expected) in [
            (vec![("WORLD_SIZE", "2")], "RANK"),
            (vec![("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "1")], "RANK=2"),
            (vec![("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "1")], "MASTER_ADDR"),
            (vec![("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "99999")], "MASTER_PORT=`99999`"),
            (vec![("WORLD_SIZE", "two")], "WORLD_SIZE=`two`"),
        ] {
            let e = Env::parse(env(&pairs), false).unwrap_err().to_string();
            assert!(e.contains(expected), "{e}");
        }
    }

    #[test]
    fn the_backend_follows_the_device_and_the_build() {
        assert_eq!(resolve_backend(Backend::Auto, Device::Cpu).unwrap(), Backend::Gloo);
        assert_eq!(resolve_backend(Backend::Gloo, Device::Cuda(0)).unwrap(), Backend::Gloo);
        let auto_gpu = if NCCL_AVAILABLE { Backend::Nccl } else { Backend::Gloo };
        assert_eq!(resolve_backend(Backend::Auto, Device::Cuda(1)).unwrap(), auto_gpu);
        let e = resolve_backend(Backend::Nccl, Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("train.backend = nccl") && e.contains("train.device = cuda"), "{e}");
        match resolve_backend(Backend::Nccl, Device::Cuda(0)) {
            Ok(b) => assert!(NCCL_AVAILABLE && b == Backend::Nccl),
            Err(e) => assert!(!NCCL_AVAILABLE && e.to_string().contains("built without NCCL") && e.to_string().contains("make build-cuda")),
        }
    }

    #[test]
    fn buckets_keep_order_and_size() {
        let t = |n: i64| Tensor::zeros([n], (Kind::Float, Device::Cpu));
        let big = BUCKET_BYTES / 4;
        let b = buckets(&[t(10), t(20), t(big), t(5)]);
        let sizes: Vec<Vec<i64>> = b.iter().map(|b| b.iter().map(|t| t.numel() as i64).collect()).collect();
        assert_eq!(sizes, vec![vec![10, 20], vec![big], vec![5]]);
    }

    #[test]
    fn slices_of_a_global_batch_partition_it_in_rank_order() {
        let global: Vec<usize> = (0..12).collect();
        let parts: Vec<&[usize]> = (0..3).map(|r| my_slice(&global, r, 3)).collect();
        assert_eq!(parts.concat(), global);
        assert_eq!(parts[1], &[4, 5, 6, 7]);
    }

    /// Two ranks in two threads of this process, over the loopback.
    #[cfg(sadajem_distributed)]
    #[test]
    fn two_ranks_average_gradients_broadcast_and_gather() {
        let port = free_port().unwrap();
        let run = |rank: usize| {
            std::thread::spawn(move || {
                let group = crate::shim::Group::new("127.0.0.1", port, rank, 2, 60, None).unwrap();
                let w = World { rank, size: 2, comm: Device::Cpu, group: Some(group) };
                // Gradients 2·(rank+1)·x of two parameters; their mean over the ranks is 3·x.
                let params: Vec<Tensor> = [3i64, 5].iter().map(|&n| Tensor::ones([n], (Kind::Float, Device::Cpu)).set_requires_grad(true)).collect();
                let loss = params.iter().map(|p| (p * (2.0 * (rank as f64 + 1.0))).sum(None)).fold(Tensor::from(0.0f32), |a, b| a + b);
                loss.backward();
                w.average_gradients(&params);
                let grads: Vec<Vec<f32>> = params.iter().map(|p| Vec::<f32>::try_from(p.grad()).unwrap()).collect();
                let mine = Tensor::from_slice(&[rank as f32 * 10.0, 1.0]);
                let stats = Tensor::from_slice(&[rank as f32 + 7.0]);
                w.broadcast_from_primary(std::slice::from_ref(&stats));
                let gathered = Vec::<f32>::try_from(w.gather(&mine).reshape([-1])).unwrap();
                let any = w.any(rank == 1);
                w.barrier();
                (grads, Vec::<f32>::try_from(&stats).unwrap(), gathered, any)
            })
        };
        let (a, b) = (run(0), run(1));
        for (grads, stats, gathered, any) in [a.join().unwrap(), b.join().unwrap()] {
            assert_eq!(grads, vec![vec![3.0; 3], vec![3.0; 5]]);
            assert_eq!(stats, vec![7.0], "rank 0's value everywhere");
            assert_eq!(gathered, vec![0.0, 1.0, 10.0, 1.0], "by rank");
            assert!(any, "rank 1's flag reaches rank 0");
        }
    }

    /// A group of one (what an explicit train.backend forms for `--nproc 1`): its collectives
    /// run and leave every value as it was, so such a run trains exactly as a single process.
    #[cfg(sadajem_distributed)]
    #[test]
    fn a_group_of_one_runs_its_collectives_as_identities() {
        let group = crate::shim::Group::new("127.0.0.1", free_port().unwrap(), 0, 1, 60, None).unwrap();
        let w = World { rank: 0, size: 1, comm: Device::Cpu, group: Some(group) };
        assert!(!w.is_single() && w.backend() == Some(Backend::Gloo));
        let p = Tensor::from_slice(&[1.0f32, -2.0, 3.5]).set_requires_grad(true);
        (&p * &p).sum(None).backward();
        w.average_gradients(std::slice::from_ref(&p));
        assert_eq!(Vec::<f32>::try_from(p.grad()).unwrap(), vec![2.0, -4.0, 7.0]);
        assert_eq!(w.broadcast_f64(0.125), 0.125);
        assert_eq!(Vec::<f32>::try_from(w.gather(&p.detach()).reshape([-1])).unwrap(), vec![1.0, -2.0, 3.5]);
        assert!(w.any(true) && !w.any(false));
        w.barrier();
    }

    #[test]
    fn a_single_process_world_does_nothing_collective() {
        let w = World::single();
        let p = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&p * 2.0).sum(None).backward();
        w.average_gradients(std::slice::from_ref(&p));
        assert_eq!(Vec::<f32>::try_from(p.grad()).unwrap(), vec![2.0; 3]);
        assert!(w.any(true) && !w.any(false));
        assert_eq!(w.gather(&p.detach()).size(), vec![1, 3]);
        assert_eq!(w.broadcast_f64(0.25), 0.25);
    }
}
