//! `sadajem data download` against a loopback HTTP server started by each test (127.0.0.1, an
//! ephemeral port, a bounded number of connections and seconds), serving small archives in the
//! real formats that the tests build: a CIFAR-10 binary tarball, SVHN .mat files, IDX .gz files.
//! The library's downloader is given a table whose MD5 sums are those of the served files; the
//! binary keeps the published ones, so through it a served test file is a checksum mismatch.
mod support;

use md5::{Digest, Md5};
use sadajem::data::download::{self, Dataset, Outcome, Remote, Source};
use sadajem::data::{self, Format, Split};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};
use support::{command, names_in, text};

/// What the server sends for one path.
#[derive(Clone)]
enum Reply {
    Ok(Vec<u8>),
    /// The headers promise the whole body; the connection closes after half of it.
    Truncated(Vec<u8>),
    Status(u16),
}

/// Serves `routes` on 127.0.0.1 for at most 20 connections or 60 seconds, whichever ends first;
/// returns the base URL. Anything not routed is a 404.
fn serve(routes: HashMap<String, Reply>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut served = 0;
        while served < 20 && Instant::now() < deadline {
            let Ok((mut conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            served += 1;
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut head = vec![];
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head);
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            let (status, body, sent) = match routes.get(&path) {
                Some(Reply::Ok(b)) => (200, b.clone(), b.len()),
                Some(Reply::Truncated(b)) => (200, b.clone(), b.len() / 2),
                Some(Reply::Status(s)) => (*s, b"error".to_vec(), 5),
                None => (404, b"not found".to_vec(), 9),
            };
            let _ = write!(conn, "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = conn.write_all(&body[..sent]);
        }
    });
    base
}

fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` CIFAR-10 records of image `i`, label `(first + i) % 10`, pixels `(i + p) % 256`.
fn cifar_batch(n: usize, first: usize) -> Vec<u8> {
    (0..n).flat_map(|i| std::iter::once(((first + i) % 10) as u8).chain((0..3072).map(move |p| ((i + p) % 256) as u8))).collect()
}

/// A cifar-10-binary.tar.gz as published (members under cifar-10-batches-bin/), with 3 images
/// per training batch and 4 test images.
fn cifar10_tarball() -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(vec![], flate2::Compression::fast()));
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, format!("cifar-10-batches-bin/{name}"), data).unwrap();
    };
    for k in 1..=5 {
        add(&format!("data_batch_{k}.bin"), &cifar_batch(3, k));
    }
    add("test_batch.bin", &cifar_batch(4, 0));
    add("batches.meta.txt", b"airplane\nautomobile\n");
    add("readme.html", b"<html></html>");
    b.into_inner().unwrap().finish().unwrap()
}

/// An SVHN file (MATLAB v5, little-endian, uncompressed): X uint8 [32, 32, 3, n], y double [n, 1]
/// with labels 1..=10 (10 is the digit 0).
fn svhn_mat(n: usize) -> Vec<u8> {
    fn element(kind: u32, data: &[u8]) -> Vec<u8> {
        let mut out = [kind.to_le_bytes(), (data.len() as u32).to_le_bytes()].concat();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(8) * 8, 0);
        out
    }
    // miINT8 1, miUINT8 2, miINT32 5, miUINT32 6, miDOUBLE 9, miMATRIX 14; mxDOUBLE 6, mxUINT8 9.
    let matrix = |name: &str, class: u32, dims: &[u32], kind: u32, data: &[u8]| {
        let mut body = element(6, &[class.to_le_bytes(), [0; 4]].concat());
        body.extend(element(5, &dims.iter().flat_map(|d| d.to_le_bytes()).collect::<Vec<_>>()));
        body.extend(element(1, name.as_bytes()));
        body.extend(element(kind, data));
        element(14, &body)
    };
    let mut out = b"MATLAB 5.0 MAT-file, written by tests/download.rs".to_vec();
    out.resize(124, b' ');
    out.extend_from_slice(&[0x00, 0x01, b'I', b'M']);
    let x: Vec<u8> = (0..n * 3 * 32 * 32).map(|i| (i % 251) as u8).collect();
    let y: Vec<u8> = (0..n).flat_map(|i| ((i % 10) as f64 + 1.0).to_le_bytes()).collect();
    out.extend(matrix("X", 9, &[32, 32, 3, n as u32], 2, &x));
    out.extend(matrix("y", 6, &[n as u32, 1], 9, &y));
    out
}

/// Names in `dir`, sorted.
/// The real CIFAR-10 entry with the MD5 of the served test archive.
fn test_cifar10<'a>(files: &'a [Remote<'a>]) -> Dataset<'a> {
    Dataset { files, ..download::find("cifar10").unwrap().clone() }
}

#[test]
fn a_cifar10_tarball_is_fetched_verified_and_unpacked_where_the_reader_finds_it() {
    let archive = cifar10_tarball();
    let md5 = md5_hex(&archive);
    let base = serve(HashMap::from([("/c/cifar-10-binary.tar.gz".to_string(), Reply::Ok(archive))]));
    let real = &download::find("cifar10").unwrap().files[0];
    let files = [Remote { md5: &md5, ..real.clone() }];
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("sets/cifar10");
    let source = Source { base: Some(format!("{base}/c")) };
    assert_eq!(download::download(&test_cifar10(&files), &to, &source).unwrap(), Outcome::Downloaded);
    assert_eq!(data::detect_format(&to).unwrap(), Format::Cifar10);
    let train = data::load(&to, Format::Cifar10, Split::Train, Default::default()).unwrap();
    let test = data::load(&to, Format::Cifar10, Split::Test, Default::default()).unwrap();
    assert_eq!((train.n, test.n), (15, 4));
    assert_eq!(train.labels[..4], [1, 2, 3, 2], "batch 1 starts at label 1, batch 2 at 2");
    assert_eq!(test.image(1)[..3], [1, 2, 3]);
    // Only the dataset's files, under their bare names; no staging directory left.
    assert_eq!(names_in(&to).len(), 7);
    assert!(!names_in(&to).contains(&"readme.html".to_string()));
    assert_eq!(names_in(&dir.path().join("sets")), ["cifar10"]);
    // A second call finds it there and fetches nothing (the server would serve it again).
    assert_eq!(download::download(&test_cifar10(&files), &to, &source).unwrap(), Outcome::AlreadyThere);
}

#[test]
fn svhn_and_idx_files_are_kept_as_published() {
    let (train, test) = (svhn_mat(6), svhn_mat(3));
    let mnist = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    let idx: Vec<(String, Vec<u8>)> = names_in(&mnist).into_iter().map(|f| (f.clone(), std::fs::read(mnist.join(&f)).unwrap())).collect();
    let mut routes: HashMap<String, Reply> = idx.iter().map(|(f, b)| (format!("/{f}"), Reply::Ok(b.clone()))).collect();
    routes.insert("/train_32x32.mat".into(), Reply::Ok(train.clone()));
    routes.insert("/test_32x32.mat".into(), Reply::Ok(test.clone()));
    let source = Source { base: Some(serve(routes)) };
    let dir = tempfile::tempdir().unwrap();

    let sums = [md5_hex(&train), md5_hex(&test)];
    let real = download::find("svhn").unwrap();
    let files: Vec<Remote> = real.files.iter().zip(&sums).map(|(r, m)| Remote { md5: m, ..r.clone() }).collect();
    let svhn = Dataset { files: &files, ..real.clone() };
    download::download(&svhn, &dir.path().join("svhn"), &source).unwrap();
    let set = data::load(&dir.path().join("svhn"), Format::Svhn, Split::Train, Default::default()).unwrap();
    assert_eq!((set.n, set.channels, set.labels[..2].to_vec()), (6, 3, vec![1, 2]));
    assert_eq!(std::fs::read(dir.path().join("svhn/test_32x32.mat")).unwrap(), test, "byte for byte");

    // The bundled MNIST files (recompressed, so their own MD5 sums) as if they were published.
    let real = download::find("mnist").unwrap();
    let sums: Vec<String> = real.files.iter().map(|r| md5_hex(&idx.iter().find(|(f, _)| f == r.file).unwrap().1)).collect();
    let files: Vec<Remote> = real.files.iter().zip(&sums).map(|(r, m)| Remote { md5: m, ..r.clone() }).collect();
    let to = dir.path().join("mnist");
    download::download(&Dataset { files: &files, ..real.clone() }, &to, &source).unwrap();
    let set = data::load(&to, Format::Idx, Split::Test, Default::default()).unwrap();
    assert_eq!((set.n, set.height), (10000, 28));
}

/// Runs `sadajem data download NAME --to TO` with the downloads coming from `base`.
fn cli_download(base: &str, name: &str, to: &Path) -> (bool, String) {
    let o = command(&["data", "download", name, "--to", to.to_str().unwrap()]).env(download::BASE_ENV, base).output().unwrap();
    (o.status.success(), text(&o))
}

#[test]
fn a_wrong_checksum_a_truncated_transfer_and_a_server_error_each_say_so_and_leave_nothing() {
    let archive = cifar10_tarball();
    let md5 = md5_hex(&archive);
    let base = serve(HashMap::from([
        ("/ok/cifar-10-binary.tar.gz".to_string(), Reply::Ok(archive.clone())),
        ("/cut/cifar-10-binary.tar.gz".to_string(), Reply::Truncated(archive)),
        ("/broken/cifar-10-binary.tar.gz".to_string(), Reply::Status(500)),
        ("/broken/train_32x32.mat".to_string(), Reply::Status(503)),
    ]));
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("data/cifar10");
    let nothing_left = || assert!(!dir.path().join("data").exists(), "a failed download leaves nothing: {:?}", names_in(dir.path()));

    // Through the binary, which checks the published MD5: the test archive is not CIFAR-10.
    let (ok, out) = cli_download(&format!("{base}/ok"), "cifar10", &to);
    assert!(!ok && out.contains("checksum mismatch") && out.contains("c32a1d4ab5d03f1284b67883e8d87530") && out.contains(&md5), "{out}");
    assert!(out.contains(&format!("{base}/ok/cifar-10-binary.tar.gz")), "the address is named: {out}");
    nothing_left();

    let real = &download::find("cifar10").unwrap().files[0];
    let files = [Remote { md5: &md5, ..real.clone() }];
    let e = download::download(&test_cifar10(&files), &to, &Source { base: Some(format!("{base}/cut")) }).unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("cifar-10-binary.tar.gz") && e.contains("broke off") && e.contains(&format!("of {} bytes", cifar10_tarball().len())), "{e}");
    nothing_left();

    let (ok, out) = cli_download(&format!("{base}/broken"), "cifar10", &to);
    assert!(!ok && out.contains("HTTP 500"), "{out}");
    nothing_left();
    let (ok, out) = cli_download(&format!("{base}/broken"), "svhn", &dir.path().join("data/svhn"));
    assert!(!ok && out.contains("HTTP 503") && out.contains("train_32x32.mat"), "{out}");
    nothing_left();
    let (ok, out) = cli_download(&base, "imagenet", &to);
    assert!(!ok && out.contains("imagenet") && out.contains("cifar100"), "{out}");

    // What a killed download left is cleared by the next one; a directory holding something
    // else is refused, untouched.
    std::fs::create_dir_all(dir.path().join("data/.cifar10.download/dataset")).unwrap();
    std::fs::write(dir.path().join("data/.cifar10.download/cifar-10-binary.tar.gz"), b"half").unwrap();
    download::download(&test_cifar10(&files), &to, &Source { base: Some(format!("{base}/ok")) }).unwrap();
    assert_eq!(names_in(&dir.path().join("data")), ["cifar10"]);
    let other = dir.path().join("mine");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"x").unwrap();
    let (ok, out) = cli_download(&format!("{base}/ok"), "cifar10", &other);
    assert!(!ok && out.contains("does not hold cifar10"), "{out}");
    assert_eq!(names_in(&other), ["notes.txt"]);
    let (ok, out) = cli_download(&format!("{base}/ok"), "cifar10", &other.join("notes.txt"));
    assert!(!ok && out.contains("is not a directory"), "{out}");
}
