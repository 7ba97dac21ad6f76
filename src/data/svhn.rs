//! SVHN cropped digits (`train_32x32.mat`, `test_32x32.mat`, `extra_32x32.mat`).
//!
//! The files are MATLAB level-5 MAT-files holding two variables: `X`, uint8 images with
//! dimensions [32, 32, 3, N], and `y`, labels [N, 1] where 10 stands for the digit 0. We read
//! just enough of the MAT-file format for that, following MathWorks' "MAT-File Format" document:
//! a 128-byte header, then data elements, each an 8-byte tag (type, byte count) and its data
//! padded to 8 bytes. Small elements (up to 4 bytes) pack the tag into 4 bytes instead. A
//! variable is an `miMATRIX` element, possibly zlib-compressed inside an `miCOMPRESSED` element.

use std::path::Path;

use flate2::read::ZlibDecoder;

use super::{check_fits, find_file, inflated_size_possible, read_at_most, read_file, DataError, ImageSet, Split, MAX_INFLATION};

const NUM_CLASSES: usize = 10;
const SIDE: usize = 32;
const CHANNELS: usize = 3;
const HEADER_LEN: usize = 128;

// Data types of MAT-file elements.
const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;

// Array classes, from the low byte of a matrix's flags.
const MX_DOUBLE: u8 = 6;
const MX_UINT8: u8 = 9;
const MX_UINT64: u8 = 15;
const COMPLEX_FLAG: u32 = 0x0800;

fn file_name(split: Split) -> &'static str {
    match split {
        Split::Train => "train_32x32.mat",
        Split::Test => "test_32x32.mat",
    }
}

pub(crate) fn looks_like(dir: &Path) -> bool {
    [Split::Train, Split::Test].into_iter().any(|split| dir.join(file_name(split)).is_file())
}

/// Reads one split of SVHN: 3x32x32, 10 classes, digit 0 labelled 0.
pub fn load(dir: &Path, split: Split) -> Result<ImageSet, DataError> {
    load_mat(&find_file(dir, &[file_name(split)])?)
}

/// Reads one SVHN MAT-file by path; this is how `extra_32x32.mat` is read.
pub fn load_mat(path: &Path) -> Result<ImageSet, DataError> {
    let bytes = read_file(path)?;
    let endian = read_header(path, &bytes)?;

    let mut found = Found::default();
    let mut cur = Cursor::new(&bytes, HEADER_LEN, endian);
    while let Some(element) = next_element(&mut cur, path)? {
        match element.kind {
            MI_MATRIX => found.visit(element.data, endian, path)?,
            MI_COMPRESSED => {
                if let Some(matrix) = inflate_matrix(element.data, endian, path)? {
                    found.visit(&matrix, endian, path)?;
                }
            }
            // Other top-level elements carry nothing we need.
            _ => {}
        }
    }
    found.into_image_set(path)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Endian {
    Little,
    Big,
}

/// Checks the header; returns the byte order the rest of the file is written in.
fn read_header(path: &Path, bytes: &[u8]) -> Result<Endian, DataError> {
    if bytes.len() < HEADER_LEN {
        return Err(DataError::truncated(path, format!("the file holds {} bytes, fewer than the {HEADER_LEN}-byte MAT-file header", bytes.len())));
    }
    // The writer stores the u16 'M'<<8|'I', so its byte order shows in how it reads back.
    let endian = match &bytes[126..128] {
        b"IM" => Endian::Little,
        b"MI" => Endian::Big,
        other => {
            return Err(DataError::malformed(
                path,
                format!(
                    "not a MATLAB 5 MAT-file: header bytes 126-127 are {other:?}, \
                     expected \"IM\" or \"MI\""
                ),
            ))
        }
    };
    let version = match endian {
        Endian::Little => u16::from_le_bytes([bytes[124], bytes[125]]),
        Endian::Big => u16::from_be_bytes([bytes[124], bytes[125]]),
    };
    match version {
        0x0100 => Ok(endian),
        0x0200 => Err(DataError::malformed(
            path,
            "a MATLAB v7.3 (HDF5) MAT-file; only level-5 files (MATLAB -v7 and older, \
             as SVHN is distributed) are supported; re-save with save(..., '-v7')",
        )),
        v => Err(DataError::malformed(path, format!("MAT-file version {v:#06x}, expected 0x0100 (level 5)"))),
    }
}

/// A read position over a byte buffer in a given byte order; every read is bounds-checked.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    endian: Endian,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8], pos: usize, endian: Endian) -> Self {
        Cursor { bytes, pos, endian }
    }

    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.bytes.len())?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Some(out)
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32_from(b, self.endian))
    }
}

fn u32_from(b: &[u8], endian: Endian) -> u32 {
    let b = [b[0], b[1], b[2], b[3]];
    match endian {
        Endian::Little => u32::from_le_bytes(b),
        Endian::Big => u32::from_be_bytes(b),
    }
}

/// One data element: its type and its data, padding excluded.
struct Element<'a> {
    kind: u32,
    data: &'a [u8],
}

/// Reads the element at the cursor, or `None` at the end of the buffer.
fn next_element<'a>(cur: &mut Cursor<'a>, path: &Path) -> Result<Option<Element<'a>>, DataError> {
    if cur.remaining() == 0 {
        return Ok(None);
    }
    let start = cur.pos;
    let cut_short = |what: &str| DataError::truncated(path, format!("the file ends inside the {what} at byte {start}"));
    let first = cur.u32().ok_or_else(|| cut_short("tag of an element"))?;

    // Small element: byte count in the high half of the first word, data in the second word.
    if first >> 16 != 0 {
        let kind = first & 0xffff;
        let len = (first >> 16) as usize;
        if len > 4 {
            return Err(DataError::malformed(path, format!("small data element at byte {start} claims {len} bytes; at most 4 fit")));
        }
        let word = cur.take(4).ok_or_else(|| cut_short("small data element"))?;
        return Ok(Some(Element { kind, data: &word[..len] }));
    }

    let kind = first;
    let len = cur.u32().ok_or_else(|| cut_short("tag of an element"))? as usize;
    let remaining = cur.remaining();
    let data = cur.take(len).ok_or_else(|| {
        DataError::truncated(
            path,
            format!(
                "the data element at byte {start} (type {kind}) claims {len} bytes \
                 but only {remaining} remain"
            ),
        )
    })?;
    // Compressed elements are not padded; all others are, to a multiple of 8 bytes. A missing
    // pad at the very end of the file is harmless, so it is not an error.
    if kind != MI_COMPRESSED {
        let pad = (8 - len % 8) % 8;
        cur.pos += pad.min(cur.remaining());
    }
    Ok(Some(Element { kind, data }))
}

/// Decompresses an `miCOMPRESSED` element; returns the data of the `miMATRIX` inside, or
/// `None` when it holds something else.
fn inflate_matrix(compressed: &[u8], endian: Endian, path: &Path) -> Result<Option<Vec<u8>>, DataError> {
    let mut decoder = ZlibDecoder::new(compressed);
    let tag = read_at_most(&mut decoder, 8, path)?;
    if tag.len() < 8 {
        return Err(DataError::truncated(path, format!("a compressed element decompresses to {} bytes, fewer than a tag", tag.len())));
    }
    let kind = u32_from(&tag[..4], endian);
    if kind != MI_MATRIX {
        return Ok(None);
    }
    let len = u32_from(&tag[4..], endian) as u64;
    if !inflated_size_possible(len, compressed.len() as u64) {
        return Err(DataError::implausible(
            path,
            format!(
                "a compressed element claims a {len}-byte matrix, more than {MAX_INFLATION} times \
                 its {} compressed bytes (no image data set compresses that well)",
                compressed.len()
            ),
        ));
    }
    check_fits(path, len as f64, || format!("a compressed matrix of {len} bytes"))?;
    let data = read_at_most(&mut decoder, len, path)?;
    if (data.len() as u64) < len {
        return Err(DataError::truncated(path, format!("a compressed matrix claims {len} bytes but decompresses to {}", data.len())));
    }
    Ok(Some(data))
}

/// The parts of an `miMATRIX` we look at.
struct Matrix<'a> {
    name: String,
    class: u8,
    complex: bool,
    dims: Vec<usize>,
    /// The real part: absent for classes that have none (cells, structs, ...).
    real: Option<Element<'a>>,
}

fn parse_matrix<'a>(data: &'a [u8], endian: Endian, path: &Path) -> Result<Matrix<'a>, DataError> {
    let mut cur = Cursor::new(data, 0, endian);
    let bad = |detail: String| DataError::malformed(path, detail);

    let flags = next_element(&mut cur, path)?
        .filter(|e| e.kind == MI_UINT32 && e.data.len() == 8)
        .ok_or_else(|| bad("a matrix does not start with its array flags".to_string()))?;
    let flags = u32_from(flags.data, endian);

    let dims_el = next_element(&mut cur, path)?
        .filter(|e| e.kind == MI_INT32 && e.data.len() % 4 == 0)
        .ok_or_else(|| bad("a matrix lacks its dimensions array".to_string()))?;
    let mut dims = Vec::new();
    for b in dims_el.data.chunks_exact(4) {
        let d = u32_from(b, endian) as i32;
        let d = usize::try_from(d).map_err(|_| bad(format!("a matrix has negative dimension {d}")))?;
        dims.push(d);
    }

    let name_el =
        next_element(&mut cur, path)?.filter(|e| e.kind == MI_INT8 || e.kind == MI_UTF8).ok_or_else(|| bad("a matrix lacks its name".to_string()))?;
    let name = String::from_utf8_lossy(name_el.data).into_owned();

    let class = (flags & 0xff) as u8;
    let real = if (MX_DOUBLE..=MX_UINT64).contains(&class) { next_element(&mut cur, path)? } else { None };
    Ok(Matrix { name, class, complex: flags & COMPLEX_FLAG != 0, dims, real })
}

/// What the variables `X` and `y` turned into, as they are met.
#[derive(Default)]
struct Found {
    images: Option<(Vec<u8>, usize)>,
    labels: Option<Vec<i64>>,
    other_names: Vec<String>,
}

impl Found {
    fn visit(&mut self, matrix: &[u8], endian: Endian, path: &Path) -> Result<(), DataError> {
        if matrix.is_empty() {
            return Ok(());
        }
        let m = parse_matrix(matrix, endian, path)?;
        match m.name.as_str() {
            "X" => self.images = Some(read_images(&m, path)?),
            "y" => self.labels = Some(read_labels(&m, endian, path)?),
            _ => self.other_names.push(m.name),
        }
        Ok(())
    }

    fn into_image_set(self, path: &Path) -> Result<ImageSet, DataError> {
        let missing = |var: &str| {
            let others = if self.other_names.is_empty() { "none".to_string() } else { self.other_names.join(", ") };
            DataError::malformed(path, format!("no variable named '{var}' (other variables found: {others}); expected X (images) and y (labels)"))
        };
        let Some((images, n)) = self.images else {
            return Err(missing("X"));
        };
        let Some(labels) = self.labels else {
            return Err(missing("y"));
        };
        if labels.len() != n {
            return Err(DataError::malformed(path, format!("X holds {n} images but y holds {} labels; they must agree", labels.len())));
        }
        if n == 0 {
            return Err(DataError::Empty { path: path.to_path_buf(), detail: "X holds 0 images".to_string() });
        }
        Ok(ImageSet { images, n, channels: CHANNELS, height: SIDE, width: SIDE, labels, num_classes: NUM_CLASSES })
    }
}

/// `X` as [n, 3, 32, 32] CHW bytes, and n.
fn read_images(m: &Matrix, path: &Path) -> Result<(Vec<u8>, usize), DataError> {
    let bad = |detail: String| DataError::malformed(path, format!("variable X: {detail}"));
    if m.class != MX_UINT8 || m.complex {
        return Err(bad(format!("expected real uint8 images, found array class {}{}", m.class, if m.complex { " (complex)" } else { "" })));
    }
    // MATLAB drops trailing singleton dimensions, so a file of one image has only three.
    let n = match m.dims[..] {
        [SIDE, SIDE, CHANNELS, n] => n,
        [SIDE, SIDE, CHANNELS] => 1,
        _ => return Err(bad(format!("dimensions {:?}, expected [32, 32, 3, N]", m.dims))),
    };
    let data = match &m.real {
        Some(e) if e.kind == MI_UINT8 => e.data,
        Some(e) => return Err(bad(format!("pixels stored as data type {}, expected miUINT8 (2)", e.kind))),
        None => return Err(bad("no pixel data".to_string())),
    };
    let image_len = SIDE * SIDE * CHANNELS;
    // `n` comes from the file, so the size is checked against the bytes really present before
    // anything of that size is allocated.
    if n.checked_mul(image_len) != Some(data.len()) {
        return Err(DataError::truncated(path, format!("variable X: dimensions say {n} images of 32x32x3 but it holds {} bytes", data.len())));
    }

    // MATLAB stores column-major: element (h, w, c, i) sits at h + 32 w + 1024 c + 3072 i.
    // We want row-major [i, c, h, w], so each 32x32 plane is transposed.
    let mut out = vec![0u8; data.len()];
    for (src, dst) in data.chunks_exact(SIDE * SIDE).zip(out.chunks_exact_mut(SIDE * SIDE)) {
        for w in 0..SIDE {
            for h in 0..SIDE {
                dst[h * SIDE + w] = src[w * SIDE + h];
            }
        }
    }
    Ok((out, n))
}

/// `y` as class indices: the digit itself, with SVHN's 10 meaning 0.
fn read_labels(m: &Matrix, endian: Endian, path: &Path) -> Result<Vec<i64>, DataError> {
    let bad = |detail: String| DataError::malformed(path, format!("variable y: {detail}"));
    let real = match &m.real {
        Some(real) if !m.complex => real,
        _ => return Err(bad(format!("expected real numeric labels, found array class {}", m.class))),
    };
    let n = match m.dims[..] {
        [n, 1] | [1, n] => n,
        _ => return Err(bad(format!("dimensions {:?}, expected [N, 1]", m.dims))),
    };
    let values =
        numbers(real, endian).ok_or_else(|| bad(format!("data type {} with {} bytes is not a numeric array", real.kind, real.data.len())))?;
    if values.len() != n {
        return Err(DataError::truncated(path, format!("variable y: dimensions say {n} labels but it holds {}", values.len())));
    }
    let mut labels = Vec::with_capacity(n);
    for (index, &v) in values.iter().enumerate() {
        if v.fract() != 0.0 || !v.is_finite() {
            return Err(bad(format!("label {v} at index {index} is not a whole number")));
        }
        let label = match v as i64 {
            10 => 0,
            l @ 0..=9 => l,
            l => return Err(DataError::LabelOutOfRange { path: path.to_path_buf(), label: l, index, num_classes: NUM_CLASSES }),
        };
        labels.push(label);
    }
    Ok(labels)
}

/// Any numeric element as f64: MATLAB often stores a double array in a smaller integer type
/// when its values fit, so `y` (class double) may come as bytes.
fn numbers(e: &Element, endian: Endian) -> Option<Vec<f64>> {
    let size = match e.kind {
        MI_INT8 | MI_UINT8 => 1,
        MI_INT16 | MI_UINT16 => 2,
        MI_INT32 | MI_UINT32 | MI_SINGLE => 4,
        MI_DOUBLE | MI_INT64 | MI_UINT64 => 8,
        _ => return None,
    };
    if !e.data.len().is_multiple_of(size) {
        return None;
    }
    let values = e.data.chunks_exact(size).map(|b| {
        // Reverse big-endian words so every conversion below reads little-endian.
        let mut le = [0u8; 8];
        le[..size].copy_from_slice(b);
        if endian == Endian::Big {
            le[..size].reverse();
        }
        let [b0, b1, b2, b3, ..] = le;
        match e.kind {
            MI_INT8 => b0 as i8 as f64,
            MI_UINT8 => b0 as f64,
            MI_INT16 => i16::from_le_bytes([b0, b1]) as f64,
            MI_UINT16 => u16::from_le_bytes([b0, b1]) as f64,
            MI_INT32 => i32::from_le_bytes([b0, b1, b2, b3]) as f64,
            MI_UINT32 => u32::from_le_bytes([b0, b1, b2, b3]) as f64,
            MI_SINGLE => f32::from_le_bytes([b0, b1, b2, b3]) as f64,
            MI_DOUBLE => f64::from_le_bytes(le),
            MI_INT64 => i64::from_le_bytes(le) as f64,
            _ => u64::from_le_bytes(le) as f64,
        }
    });
    Some(values.collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::ZlibEncoder;
    use flate2::Compression;
    use std::fs;
    use std::io::Write;
    use std::path::PathBuf;

    /// A minimal MAT-file writer, enough to produce SVHN-shaped files.
    struct MatWriter {
        endian: Endian,
    }

    impl MatWriter {
        fn u32(&self, v: u32) -> [u8; 4] {
            match self.endian {
                Endian::Little => v.to_le_bytes(),
                Endian::Big => v.to_be_bytes(),
            }
        }

        fn header(&self) -> Vec<u8> {
            let mut out = b"MATLAB 5.0 MAT-file, written by the sadajem tests".to_vec();
            out.resize(124, b' ');
            match self.endian {
                Endian::Little => out.extend_from_slice(&[0x00, 0x01, b'I', b'M']),
                Endian::Big => out.extend_from_slice(&[0x01, 0x00, b'M', b'I']),
            }
            out
        }

        /// A data element; small ones use the packed 4-byte tag, as MATLAB does.
        fn element(&self, kind: u32, data: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            if data.len() <= 4 && kind != MI_MATRIX {
                out.extend_from_slice(&self.u32(((data.len() as u32) << 16) | kind));
                out.extend_from_slice(data);
                out.resize(8, 0);
                return out;
            }
            out.extend_from_slice(&self.u32(kind));
            out.extend_from_slice(&self.u32(data.len() as u32));
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(8) * 8, 0);
            out
        }

        fn matrix(&self, name: &str, class: u8, dims: &[u32], kind: u32, real: &[u8]) -> Vec<u8> {
            let mut flags = self.u32(class as u32).to_vec();
            flags.extend_from_slice(&[0; 4]);
            let dims: Vec<u8> = dims.iter().flat_map(|&d| self.u32(d)).collect();
            let mut body = self.element(MI_UINT32, &flags);
            body.extend(self.element(MI_INT32, &dims));
            body.extend(self.element(MI_INT8, name.as_bytes()));
            body.extend(self.element(kind, real));
            self.element(MI_MATRIX, &body)
        }

        fn compressed(&self, element: &[u8]) -> Vec<u8> {
            let mut enc = ZlibEncoder::new(Vec::new(), Compression::fast());
            enc.write_all(element).unwrap();
            let z = enc.finish().unwrap();
            let mut out = self.u32(MI_COMPRESSED).to_vec();
            out.extend_from_slice(&self.u32(z.len() as u32));
            out.extend(z);
            out
        }

        fn doubles(&self, values: &[f64]) -> Vec<u8> {
            values
                .iter()
                .flat_map(|v| match self.endian {
                    Endian::Little => v.to_le_bytes(),
                    Endian::Big => v.to_be_bytes(),
                })
                .collect()
        }
    }

    /// The test pixel at MATLAB index (h, w, c, i); every axis has a different weight, so a
    /// transposition mistake shows.
    fn pixel(h: usize, w: usize, c: usize, i: usize) -> u8 {
        ((h + 3 * w + 101 * c + 53 * i) % 256) as u8
    }

    /// X in MATLAB's column-major order: h fastest, then w, c, i.
    fn x_bytes(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            for c in 0..3 {
                for w in 0..32 {
                    for h in 0..32 {
                        out.push(pixel(h, w, c, i));
                    }
                }
            }
        }
        out
    }

    const LABELS: [f64; 4] = [10.0, 1.0, 9.0, 5.0];

    fn svhn_file(endian: Endian, compress: bool) -> Vec<u8> {
        let mw = MatWriter { endian };
        let x = mw.matrix("X", MX_UINT8, &[32, 32, 3, 4], MI_UINT8, &x_bytes(4));
        let y = mw.matrix("y", MX_DOUBLE, &[4, 1], MI_DOUBLE, &mw.doubles(&LABELS));
        let mut out = mw.header();
        for element in [x, y] {
            out.extend(if compress { mw.compressed(&element) } else { element });
        }
        out
    }

    fn write(dir: &Path, bytes: &[u8]) -> PathBuf {
        let path = dir.join("test_32x32.mat");
        fs::write(&path, bytes).unwrap();
        path
    }

    fn check(set: &ImageSet) {
        assert_eq!((set.n, set.channels, set.height, set.width), (4, 3, 32, 32));
        assert_eq!(set.num_classes, 10);
        assert_eq!(set.labels, [0, 1, 9, 5]);
        for i in 0..4 {
            for c in 0..3 {
                for h in 0..32 {
                    for w in 0..32 {
                        let got = set.image(i)[c * 1024 + h * 32 + w];
                        assert_eq!(got, pixel(h, w, c, i), "at (i, c, h, w) = ({i}, {c}, {h}, {w})");
                    }
                }
            }
        }
    }

    fn err_of(bytes: &[u8]) -> (String, String) {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(tmp.path(), bytes);
        let msg = load(tmp.path(), Split::Test).unwrap_err().to_string();
        (msg, path.display().to_string())
    }

    #[test]
    fn reads_plain_and_compressed_in_both_byte_orders() {
        for endian in [Endian::Little, Endian::Big] {
            for compress in [false, true] {
                let tmp = tempfile::tempdir().unwrap();
                write(tmp.path(), &svhn_file(endian, compress));
                assert!(looks_like(tmp.path()));
                check(&load(tmp.path(), Split::Test).unwrap());
            }
        }
    }

    #[test]
    fn labels_in_a_narrower_type_and_other_variables_are_fine() {
        // MATLAB writes a double array of small whole numbers as miUINT8 to save space.
        let mw = MatWriter { endian: Endian::Little };
        let mut bytes = mw.header();
        bytes.extend(mw.matrix("note", MX_DOUBLE, &[1, 1], MI_DOUBLE, &mw.doubles(&[1.5])));
        bytes.extend(mw.compressed(&mw.matrix("y", MX_DOUBLE, &[4, 1], MI_UINT8, &[10, 1, 9, 5])));
        bytes.extend(mw.matrix("X", MX_UINT8, &[32, 32, 3, 4], MI_UINT8, &x_bytes(4)));
        let tmp = tempfile::tempdir().unwrap();
        let path = write(tmp.path(), &bytes);
        check(&load_mat(&path).unwrap());
    }

    #[test]
    fn truncated_files_are_errors() {
        for compress in [false, true] {
            let full = svhn_file(Endian::Little, compress);
            for cut in [0, 100, 130, 200, full.len() / 2, full.len() - 9] {
                let (msg, path) = err_of(&full[..cut]);
                assert!(msg.contains(&path), "cut at {cut}: {msg}");
            }
        }
        let (msg, path) = err_of(&svhn_file(Endian::Little, false)[..100]);
        assert!(msg.contains(&format!("{path}: truncated")), "{msg}");
    }

    #[test]
    fn wrong_headers_are_errors() {
        let (msg, path) = err_of(&[b'x'; 200]);
        assert!(msg.contains(&path) && msg.contains("not a MATLAB 5 MAT-file"), "{msg}");

        let mut v73 = svhn_file(Endian::Little, false);
        v73[124] = 0x00;
        v73[125] = 0x02;
        let (msg, path) = err_of(&v73);
        assert!(msg.contains(&path) && msg.contains("v7.3"), "{msg}");
    }

    #[test]
    fn bad_variables_are_errors() {
        let mw = MatWriter { endian: Endian::Little };
        let x = mw.matrix("X", MX_UINT8, &[32, 32, 3, 4], MI_UINT8, &x_bytes(4));
        let file = |parts: &[&[u8]]| {
            let mut out = mw.header();
            for p in parts {
                out.extend_from_slice(p);
            }
            out
        };

        let y = mw.matrix("y", MX_DOUBLE, &[4, 1], MI_DOUBLE, &mw.doubles(&[1.0, 2.0, 11.0, 3.0]));
        let (msg, path) = err_of(&file(&[&x, &y]));
        assert!(msg.contains(&format!("{path}: label 11 at index 2 is out of range")), "{msg}");

        let y = mw.matrix("y", MX_DOUBLE, &[3, 1], MI_DOUBLE, &mw.doubles(&[1.0, 2.0, 3.0]));
        let (msg, path) = err_of(&file(&[&x, &y]));
        assert!(msg.contains(&path) && msg.contains("X holds 4 images but y holds 3 labels"), "{msg}");

        let y = mw.matrix("y", MX_DOUBLE, &[4, 1], MI_DOUBLE, &mw.doubles(&LABELS));
        let (msg, path) = err_of(&file(&[&y]));
        assert!(msg.contains(&path) && msg.contains("no variable named 'X'"), "{msg}");

        let grey = mw.matrix("X", MX_UINT8, &[28, 28, 1, 4], MI_UINT8, &[0; 28 * 28 * 4]);
        let (msg, path) = err_of(&file(&[&grey, &y]));
        assert!(msg.contains(&path) && msg.contains("[28, 28, 1, 4], expected [32, 32, 3, N]"), "{msg}");

        // Dimensions promising more images than the data holds.
        let short = mw.matrix("X", MX_UINT8, &[32, 32, 3, 5], MI_UINT8, &x_bytes(4));
        let (msg, path) = err_of(&file(&[&short, &y]));
        assert!(msg.contains(&format!("{path}: truncated")), "{msg}");
    }

    #[test]
    fn absurd_sizes_fail_fast() {
        let mw = MatWriter { endian: Endian::Little };

        // An element claiming 2 GiB in a small file.
        let mut bytes = mw.header();
        bytes.extend_from_slice(&mw.u32(MI_MATRIX));
        bytes.extend_from_slice(&mw.u32(1 << 31));
        bytes.extend_from_slice(&[0; 64]);
        let (msg, path) = err_of(&bytes);
        assert!(msg.contains(&format!("{path}: truncated")) && msg.contains("2147483648"), "{msg}");

        // A compressed element whose matrix claims 4 GiB.
        let mut inner = mw.u32(MI_MATRIX).to_vec();
        inner.extend_from_slice(&mw.u32(u32::MAX));
        let mut bytes = mw.header();
        bytes.extend(mw.compressed(&inner));
        let (msg, path) = err_of(&bytes);
        assert!(msg.contains(&format!("{path}: implausible header")), "{msg}");

        // Dimensions whose product overflows.
        let y = mw.matrix("y", MX_DOUBLE, &[4, 1], MI_DOUBLE, &mw.doubles(&LABELS));
        let x = mw.matrix("X", MX_UINT8, &[32, 32, 3, 0x7fff_ffff], MI_UINT8, &x_bytes(1));
        let mut bytes = mw.header();
        bytes.extend(x);
        bytes.extend(y);
        let (msg, path) = err_of(&bytes);
        assert!(msg.contains(&path), "{msg}");
    }

    #[test]
    fn mutated_files_never_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            // xorshift64: deterministic, so a failure reproduces.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as usize
        };
        for compress in [false, true] {
            let good = svhn_file(Endian::Little, compress);
            for _ in 0..150 {
                let mut bytes = good.clone();
                for _ in 0..1 + next() % 4 {
                    let at = next() % bytes.len();
                    bytes[at] = next() as u8;
                }
                write(tmp.path(), &bytes);
                let _ = load(tmp.path(), Split::Test);
            }
        }
    }

    #[test]
    fn missing_file_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let msg = load(tmp.path(), Split::Train).unwrap_err().to_string();
        assert!(msg.contains("no such file; expected train_32x32.mat in"), "{msg}");
    }

    /// 100 MB of zeros compress to ~100 kB; a matrix of them is refused before it is inflated
    /// (1000-fold expansion had cost 2.2 GB from a 4 MB file).
    #[test]
    fn compressed_matrices_expand_only_so_far() {
        let mw = MatWriter { endian: Endian::Little };
        let n = 100_000_000 / 3072;
        let x = mw.matrix("X", MX_UINT8, &[32, 32, 3, n as u32], MI_UINT8, &vec![0; n * 3072]);
        let mut bytes = mw.header();
        bytes.extend(mw.compressed(&x));
        assert!(bytes.len() < 1_000_000, "{}", bytes.len());
        let start = std::time::Instant::now();
        let (msg, path) = err_of(&bytes);
        assert!(msg.contains(&format!("{path}: implausible header")) && msg.contains("more than 100 times"), "{msg}");
        assert!(start.elapsed().as_secs() < 5);
    }
}
