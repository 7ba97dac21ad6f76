//! A folder of PNG/JPEG images, for data sets that come as plain pictures (CelebA, a user's own).
//!
//! Layouts, in the order they are tried:
//! - `DIR/train/` and `DIR/test/` both present: they are the two splits, each laid out as below.
//!   Class names come from `train/`, so a class missing from `test/` keeps its index.
//! - sub-folders holding images: one class per sub-folder, indices in sorted name order.
//! - otherwise the images directly in `DIR` are one class, 0 (an OOD set needs no labels).
//!
//! Without the train/test pair, every split returns the whole folder. Files are recognised by
//! their extension (`.png`, `.jpg`, `.jpeg`, any case), so notes and CSVs beside the images are
//! skipped; hidden entries (starting with `.`) are ignored; sub-folders are not searched deeper.

use std::fs;
use std::path::{Path, PathBuf};

use image::imageops::{self, FilterType};
use image::{DynamicImage, GenericImageView, ImageReader, Limits, RgbaImage};
use serde::{Deserialize, Serialize};

use super::{DataError, ImageSet, Split};

/// How folder images are brought to one shape; the binary formats have a fixed shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderOptions {
    /// 1 = luma (Rec. 709 weights, as the `image` crate computes it), 3 = RGB.
    pub channels: usize,
    /// Output side in pixels: images are centre-cropped to a square, then resized to this.
    pub size: usize,
}

impl Default for FolderOptions {
    /// The shape of CIFAR-10, the usual in-distribution set when a folder is read for OOD tests.
    fn default() -> Self {
        FolderOptions { channels: 3, size: 32 }
    }
}

/// Larger sides are almost certainly a typo, and would make a folder of photos take gigabytes.
const MAX_SIZE: usize = 4096;

/// What one image file may cost to decode: sides up to this (a 250-megapixel photo) ...
const MAX_DECODE_SIDE: u32 = 16384;
/// ... and this much memory for the decoded pixels (the image crate's default, stated here
/// because it is what bounds a file that claims a huge image in a few compressed bytes).
const MAX_DECODE_BYTES: u64 = 512 << 20;

impl FolderOptions {
    fn check(&self) -> Result<(), DataError> {
        if self.channels != 1 && self.channels != 3 {
            return Err(DataError::BadOption(format!("folder images need 1 (grey) or 3 (RGB) channels, got {}", self.channels)));
        }
        if self.size == 0 || self.size > MAX_SIZE {
            return Err(DataError::BadOption(format!("folder image size must be 1..={MAX_SIZE} pixels, got {}", self.size)));
        }
        Ok(())
    }
}

pub(crate) fn looks_like(dir: &Path) -> bool {
    // An image at most two levels down covers every layout: flat, classes, train/class.
    fn has_image(dir: &Path, depth: usize) -> bool {
        let Ok(entries) = fs::read_dir(dir) else {
            return false;
        };
        entries.flatten().any(|entry| {
            let path = entry.path();
            if is_hidden(&path) {
                false
            } else if path.is_dir() {
                depth > 0 && has_image(&path, depth - 1)
            } else {
                is_image_name(&path)
            }
        })
    }
    has_image(dir, 2)
}

/// Reads one split of an image folder (see the module docs for the layouts).
pub fn load(dir: &Path, split: Split, opts: FolderOptions) -> Result<ImageSet, DataError> {
    opts.check()?;
    let (train, test) = (dir.join("train"), dir.join("test"));
    let (class_root, root) = if train.is_dir() && test.is_dir() {
        let root = match split {
            Split::Train => train.clone(),
            Split::Test => test,
        };
        (train, root)
    } else {
        (dir.to_path_buf(), dir.to_path_buf())
    };

    let classes = class_folders(&class_root)?;
    let mut files: Vec<(PathBuf, i64)> = Vec::new();
    let num_classes = if classes.is_empty() {
        files.extend(image_files(&root)?.into_iter().map(|path| (path, 0)));
        1
    } else {
        for name in class_folders(&root)? {
            if !classes.contains(&name) {
                return Err(DataError::malformed(
                    root.join(&name),
                    format!("a class folder that {} lacks; its classes are {}", class_root.display(), classes.join(", ")),
                ));
            }
        }
        if let Some(loose) = image_files(&root)?.first() {
            return Err(DataError::malformed(
                loose,
                "an image beside class sub-folders; put every image in a class folder, \
                 or use a flat folder with no class sub-folders",
            ));
        }
        for (label, name) in classes.iter().enumerate() {
            let class_dir = root.join(name);
            if class_dir.is_dir() {
                let found = image_files(&class_dir)?;
                files.extend(found.into_iter().map(|path| (path, label as i64)));
            }
        }
        classes.len()
    };
    if files.is_empty() {
        return Err(DataError::Empty {
            path: root,
            detail: "expected PNG or JPEG files (.png, .jpg, .jpeg), in class sub-folders \
                     or directly in the folder"
                .to_string(),
        });
    }

    let image_len = opts.channels * opts.size * opts.size;
    // Checked before decoding anything: the allocation failing instead was an abort (SIGABRT).
    let bytes = files.len() as f64 * image_len as f64;
    let what = || format!("{} images at {}x{} with {} channel(s) take {bytes:.0} bytes", files.len(), opts.size, opts.size, opts.channels);
    super::check_fits(&root, bytes, what)?;
    let mut images = Vec::new();
    images.try_reserve_exact(files.len() * image_len).map_err(|_| DataError::TooLarge {
        path: root.clone(),
        detail: format!("{} (the allocation failed)", what()),
        memory: crate::memory::human(crate::memory::physical_bytes() as f64),
    })?;
    let mut labels = Vec::with_capacity(files.len());
    for (path, label) in &files {
        images.extend(decode(path, opts)?);
        labels.push(*label);
    }
    Ok(ImageSet { images, n: files.len(), channels: opts.channels, height: opts.size, width: opts.size, labels, num_classes })
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().is_some_and(|name| name.to_string_lossy().starts_with('.'))
}

fn is_image_name(path: &Path) -> bool {
    path.extension().is_some_and(|ext| {
        let ext = ext.to_string_lossy().to_ascii_lowercase();
        ext == "png" || ext == "jpg" || ext == "jpeg"
    })
}

/// Paths of the visible entries of `dir`, sorted by name so the order never depends on the
/// file system.
fn entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        if !is_hidden(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn image_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    Ok(entries(dir)?.into_iter().filter(|path| path.is_file() && is_image_name(path)).collect())
}

/// Names of the sub-folders of `dir` that hold images, sorted; a sub-folder with none (say,
/// `annotations/`) is not a class.
fn class_folders(dir: &Path) -> Result<Vec<String>, DataError> {
    let mut names = Vec::new();
    for path in entries(dir)? {
        if path.is_dir() && !image_files(&path)?.is_empty() {
            if let Some(name) = path.file_name() {
                names.push(name.to_string_lossy().into_owned());
            }
        }
    }
    Ok(names)
}

/// Decodes one image to `opts.channels` CHW planes of `opts.size` squared.
fn decode(path: &Path, opts: FolderOptions) -> Result<Vec<u8>, DataError> {
    check_png_palette(path)?;
    // The content decides the decoder, so a JPEG saved as .png still reads.
    let mut reader = ImageReader::open(path).and_then(|r| r.with_guessed_format()).map_err(|e| DataError::io(path, e))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DECODE_SIDE);
    limits.max_image_height = Some(MAX_DECODE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let image = reader.decode().map_err(|error| match error {
        image::ImageError::Limits(_) => DataError::malformed(
            path,
            format!(
                "the image is larger than this reader decodes (sides up to {MAX_DECODE_SIDE} \
                 pixels, {} MiB of pixels); shrink it first",
                MAX_DECODE_BYTES >> 20
            ),
        ),
        error => DataError::Image { path: path.to_path_buf(), error },
    })?;
    // Converted only once small: converting first would copy a large image at up to 4 bytes a
    // pixel (a 400 KB PNG of 20000x20000 grey pixels became 1.2 GB of RGB that way).
    let small = DynamicImage::ImageRgba8(square(&image, opts.size as u32));
    if opts.channels == 1 {
        Ok(small.to_luma8().into_raw())
    } else {
        let rgb = small.to_rgb8().into_raw();
        let plane = opts.size * opts.size;
        let mut chw = vec![0u8; 3 * plane];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                chw[c * plane + i] = px[c];
            }
        }
        Ok(chw)
    }
}

/// Refuses a PNG whose palette (PLTE chunk) is not a whole number of RGB entries. The `png`
/// crate (0.18.1, the newest) checks only that it holds 3 to 768 bytes and then panics while
/// expanding the palette (`decoder/transform/palette.rs:74`), which would end a run on one bad
/// file; the PNG specification (11.2.3) requires a multiple of three. Only the chunk headers up to
/// the image data are read (a few reads for any real file); anything else wrong with the file is
/// left for the decoder to report.
fn check_png_palette(path: &Path) -> Result<(), DataError> {
    use std::io::{BufReader, ErrorKind, Read};
    // Fills `buf`; false where the file ends first (too short to be a PNG, or cut short: both
    // for the decoder to report).
    fn read(file: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<bool, DataError> {
        match file.read_exact(buf) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(DataError::io(path, e)),
        }
    }
    let mut file = BufReader::new(fs::File::open(path).map_err(|e| DataError::io(path, e))?);
    let mut signature = [0u8; 8];
    if !read(&mut file, &mut signature, path)? || signature != *b"\x89PNG\r\n\x1a\n" {
        return Ok(());
    }
    let mut header = [0u8; 8];
    while read(&mut file, &mut header, path)? {
        let length = u32::from_be_bytes(header[..4].try_into().unwrap());
        match &header[4..] {
            b"IDAT" | b"IEND" => return Ok(()),
            b"PLTE" if length % 3 != 0 => {
                return Err(DataError::malformed(
                    path,
                    format!("its palette (PLTE chunk) has {length} bytes, not a whole number of 3-byte RGB entries"),
                ))
            }
            // The chunk's data and its CRC.
            _ => file.seek_relative(i64::from(length) + 4).map_err(|e| DataError::io(path, e))?,
        }
    }
    Ok(())
}

/// Crops the centre square (so faces and objects keep their proportions) and resizes it to
/// `size`. Up to 4x smaller with the Triangle filter: bilinear, with its support widened when
/// shrinking, so the image is averaged down rather than aliased. Beyond that by area averaging,
/// which is as good there and costs time in proportion to the pixels, not to pixels times the
/// filter's width (20 s for a 20000x20000 image with Triangle).
fn square(image: &DynamicImage, size: u32) -> RgbaImage {
    let (w, h) = image.dimensions();
    let side = w.min(h);
    let view = imageops::crop_imm(image, (w - side) / 2, (h - side) / 2, side, side);
    if side == size {
        view.to_image()
    } else if side > 4 * size {
        imageops::thumbnail(&*view, size, size)
    } else {
        imageops::resize(&*view, size, size, FilterType::Triangle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    /// A 40x20 image, black on the left half and `colour` on the right half.
    fn half_and_half(colour: [u8; 3]) -> RgbImage {
        RgbImage::from_fn(40, 20, |x, _| if x < 20 { Rgb([0, 0, 0]) } else { Rgb(colour) })
    }

    fn two_classes(dir: &Path) {
        fs::create_dir_all(dir.join("cats")).unwrap();
        fs::create_dir_all(dir.join("dogs")).unwrap();
        half_and_half([255, 0, 0]).save(dir.join("cats/a.png")).unwrap();
        RgbImage::from_pixel(12, 12, Rgb([0, 0, 255])).save(dir.join("cats/b.PNG")).unwrap();
        RgbImage::from_pixel(16, 16, Rgb([0, 255, 0])).save(dir.join("dogs/c.jpg")).unwrap();
        fs::write(dir.join("dogs/README.txt"), "not an image").unwrap();
        fs::write(dir.join("dogs/.hidden.png"), "ignored").unwrap();
    }

    fn rgb32() -> FolderOptions {
        FolderOptions::default()
    }

    #[test]
    fn reads_classes_from_sub_folders() {
        let tmp = tempfile::tempdir().unwrap();
        two_classes(tmp.path());
        assert!(looks_like(tmp.path()));
        let opts = FolderOptions { channels: 3, size: 8 };
        let set = load(tmp.path(), Split::Train, opts).unwrap();
        assert_eq!((set.n, set.channels, set.height, set.width), (3, 3, 8, 8));
        assert_eq!(set.num_classes, 2);
        assert_eq!(set.labels, [0, 0, 1]);

        // a.png: the centre square is half black, half red; red shows only in the R plane.
        let a = set.image(0);
        assert!(a[0] < 40 && a[7] > 215, "row 0 of R: {:?}", &a[..8]);
        assert!(a[64..].iter().all(|&v| v < 10), "G and B planes");
        // b.PNG (upper-case suffix) is pure blue; c.jpg pure green, give or take JPEG.
        assert!(set.image(1)[128..].iter().all(|&v| v == 255));
        let c = set.image(2);
        assert!(c[64..128].iter().all(|&v| v > 240) && c[..64].iter().all(|&v| v < 15));

        // Same data, whichever split is asked for.
        assert!(load(tmp.path(), Split::Test, opts).unwrap() == set);
    }

    #[test]
    fn converts_to_grey_and_resizes() {
        let tmp = tempfile::tempdir().unwrap();
        two_classes(tmp.path());
        let set = load(tmp.path(), Split::Test, FolderOptions { channels: 1, size: 28 }).unwrap();
        assert_eq!((set.channels, set.height, set.width), (1, 28, 28));
        assert_eq!(set.images.len(), 3 * 28 * 28);
        // Pure blue in Rec. 709 luma is about 0.0722 * 255.
        assert!(set.image(1).iter().all(|&v| (15..=21).contains(&v)), "{:?}", &set.image(1)[..4]);
    }

    #[test]
    fn train_and_test_folders_are_the_splits() {
        let tmp = tempfile::tempdir().unwrap();
        two_classes(&tmp.path().join("train"));
        fs::create_dir_all(tmp.path().join("test/dogs")).unwrap();
        GrayImage::from_pixel(32, 32, Luma([7])).save(tmp.path().join("test/dogs/d.png")).unwrap();
        assert!(looks_like(tmp.path()));

        assert_eq!(load(tmp.path(), Split::Train, rgb32()).unwrap().n, 3);
        let test = load(tmp.path(), Split::Test, rgb32()).unwrap();
        // Only dogs in test, still class 1 of 2 as in train.
        assert_eq!(test.labels, [1]);
        assert_eq!(test.num_classes, 2);
        assert!(test.images.iter().all(|&v| v == 7));

        fs::create_dir_all(tmp.path().join("test/birds")).unwrap();
        GrayImage::new(4, 4).save(tmp.path().join("test/birds/e.png")).unwrap();
        let msg = load(tmp.path(), Split::Test, rgb32()).unwrap_err().to_string();
        assert!(msg.contains("birds") && msg.contains("cats, dogs"), "{msg}");
    }

    #[test]
    fn flat_folder_is_one_class() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["x.png", "y.jpeg"] {
            RgbImage::from_pixel(50, 60, Rgb([90, 90, 90])).save(tmp.path().join(name)).unwrap();
        }
        fs::create_dir(tmp.path().join("annotations")).unwrap();
        fs::write(tmp.path().join("annotations/list.csv"), "x.png,1").unwrap();
        let set = load(tmp.path(), Split::Test, rgb32()).unwrap();
        assert_eq!((set.n, set.num_classes), (2, 1));
        assert_eq!(set.labels, [0, 0]);
    }

    #[test]
    fn undecodable_image_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        two_classes(tmp.path());
        let bad = tmp.path().join("dogs/broken.png");
        fs::write(&bad, b"\x89PNG\r\n\x1a\n this is not really a PNG").unwrap();
        let msg = load(tmp.path(), Split::Train, rgb32()).unwrap_err().to_string();
        assert!(msg.contains(&bad.display().to_string()), "{msg}");

        // A real PNG cut short.
        let full = fs::read(tmp.path().join("cats/a.png")).unwrap();
        fs::write(&bad, &full[..full.len() / 2]).unwrap();
        let msg = load(tmp.path(), Split::Train, rgb32()).unwrap_err().to_string();
        assert!(msg.contains(&bad.display().to_string()), "{msg}");

        // Text with an image name.
        fs::write(&bad, b"hello").unwrap();
        let msg = load(tmp.path(), Split::Train, rgb32()).unwrap_err().to_string();
        assert!(msg.contains(&bad.display().to_string()), "{msg}");
    }

    #[test]
    fn large_images_are_shrunk_by_area_averaging() {
        let tmp = tempfile::tempdir().unwrap();
        let wide = RgbImage::from_fn(400, 200, |x, _| if x < 200 { Rgb([0, 0, 0]) } else { Rgb([255, 0, 0]) });
        wide.save(tmp.path().join("a.png")).unwrap();
        let opts = FolderOptions { channels: 3, size: 8 };
        let a = load(tmp.path(), Split::Train, opts).unwrap().images;
        assert!(a[..4].iter().all(|&v| v == 0) && a[4..8].iter().all(|&v| v == 255), "row 0 of R: {:?}", &a[..8]);
        assert!(a[64..].iter().all(|&v| v == 0), "G and B planes");
    }

    /// One PNG chunk: length, type, data, CRC-32.
    fn png_chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        let mut h = crc32fast::Hasher::new();
        h.update(kind);
        h.update(data);
        c.extend_from_slice(&h.finalize().to_be_bytes());
        c
    }

    /// A 2x2 paletted PNG (8-bit indices 0..4) with `palette` as its PLTE chunk.
    fn paletted_png(palette: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut ihdr = 2u32.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&2u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 3, 0, 0, 0]);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&[0, 0, 1, 0, 0, 1]).unwrap();
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(png_chunk(b"IHDR", &ihdr));
        png.extend(png_chunk(b"PLTE", palette));
        png.extend(png_chunk(b"IDAT", &z.finish().unwrap()));
        png.extend(png_chunk(b"IEND", b""));
        png
    }

    #[test]
    fn a_palette_of_partial_entries_is_an_error_not_a_panic() {
        // Found by the fuzz target folder_image: png 0.18.1 panics on such a palette.
        let tmp = tempfile::tempdir().unwrap();
        let grey = FolderOptions { channels: 1, size: 2 };
        fs::write(tmp.path().join("a.png"), paletted_png(&[0, 0, 0, 255, 255, 255])).unwrap();
        let whole = load(tmp.path(), Split::Train, grey).unwrap();
        assert_eq!(whole.images, [0, 255, 0, 255]);
        for len in [4, 5, 7] {
            fs::write(tmp.path().join("a.png"), paletted_png(&[255; 7][..len])).unwrap();
            let msg = load(tmp.path(), Split::Train, grey).unwrap_err().to_string();
            assert!(msg.contains(&format!("a.png: its palette (PLTE chunk) has {len} bytes")), "{msg}");
        }
    }

    #[test]
    fn an_image_claiming_huge_sides_is_refused_before_decoding() {
        // A PNG header of 20000x20000 grey pixels and a few bytes of data: decoding it would
        // take 400 MB.
        let mut ihdr = 20000u32.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&20000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(png_chunk(b"IHDR", &ihdr));
        png.extend(png_chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
        png.extend(png_chunk(b"IEND", b""));
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("huge.png"), png).unwrap();
        let msg = load(tmp.path(), Split::Train, rgb32()).unwrap_err().to_string();
        assert!(msg.contains("huge.png: the image is larger than this reader decodes"), "{msg}");
    }

    #[test]
    fn empty_and_ambiguous_folders_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("notes.txt"), "no images here").unwrap();
        assert!(!looks_like(tmp.path()));
        let msg = load(tmp.path(), Split::Train, rgb32()).unwrap_err().to_string();
        assert!(msg.contains("no images found"), "{msg}");

        two_classes(tmp.path());
        GrayImage::new(4, 4).save(tmp.path().join("stray.png")).unwrap();
        let msg = load(tmp.path(), Split::Train, rgb32()).unwrap_err().to_string();
        assert!(msg.contains("stray.png") && msg.contains("class folder"), "{msg}");

        let msg = load(&tmp.path().join("nope"), Split::Train, rgb32()).unwrap_err().to_string();
        assert!(msg.contains("nope"), "{msg}");
    }

    #[test]
    fn bad_options_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        two_classes(tmp.path());
        for opts in [FolderOptions { channels: 2, size: 32 }, FolderOptions { channels: 3, size: 0 }, FolderOptions { channels: 3, size: 100_000 }] {
            assert!(matches!(load(tmp.path(), Split::Train, opts), Err(DataError::BadOption(_))));
        }
    }

    /// More images than memory holds at the asked size aborted (SIGABRT); now an error before
    /// any is decoded. The files need not even be images: the count and size decide.
    #[test]
    fn a_split_that_cannot_fit_is_a_named_error() {
        let tmp = tempfile::tempdir().unwrap();
        let per_image = 3 * 4096 * 4096u64;
        let n = crate::memory::physical_bytes() / per_image + 1;
        for i in 0..n {
            fs::write(tmp.path().join(format!("{i}.png")), b"").unwrap();
        }
        let opts = FolderOptions { channels: 3, size: 4096 };
        let msg = load(tmp.path(), Split::Train, opts).unwrap_err().to_string();
        assert!(msg.contains(&format!("{n} images at 4096x4096 with 3 channel(s)")) && msg.contains("more than this machine's"), "{msg}");
    }
}
