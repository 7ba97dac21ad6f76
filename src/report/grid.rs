//! Image grids (PNG) of a batch, e.g. samples from the replay buffer.
use anyhow::{bail, Result};
use image::ImageEncoder;
use std::path::Path;
use tch::{Kind, Tensor};

const PAD: usize = 2;

/// Writes `x` ([N, C, H, W], values in [−1, 1], C = 1 or 3) as a grid of ⌈√N⌉ columns with a
/// 2-pixel white border, atomically.
pub fn save_grid(x: &Tensor, path: &Path) -> Result<()> {
    let n = x.size().first().copied().unwrap_or(0).max(0);
    save_grid_columns(x, (n as f64).sqrt().ceil().max(1.0) as usize, path)
}

/// The same with `cols` columns (e.g. one row per class).
pub fn save_grid_columns(x: &Tensor, cols: usize, path: &Path) -> Result<()> {
    let size = x.size();
    let [n, c, h, w] = size[..] else { bail!("a grid needs [N, C, H, W] images, got {size:?}") };
    if c != 1 && c != 3 {
        bail!("a grid needs 1 or 3 channels, got {c}");
    }
    let (n, c, h, w) = (n as usize, c as usize, h as usize, w as usize);
    let cols = cols.max(1);
    let rows = n.div_ceil(cols);
    let (gw, gh) = (cols * (w + PAD) + PAD, rows * (h + PAD) + PAD);
    let pixels: Vec<u8> = Vec::try_from(
        ((x.detach().to_device(tch::Device::Cpu).to_kind(Kind::Float).clamp(-1.0, 1.0) + 1.0) * 127.5)
            .round()
            .to_kind(Kind::Uint8)
            .contiguous()
            .view([-1]),
    )?;
    let mut grid = vec![255u8; gw * gh * c];
    for i in 0..n {
        let (gy, gx) = (PAD + (i / cols) * (h + PAD), PAD + (i % cols) * (w + PAD));
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    grid[((gy + y) * gw + gx + xx) * c + ch] = pixels[((i * c + ch) * h + y) * w + xx];
                }
            }
        }
    }
    let color = if c == 1 { image::ExtendedColorType::L8 } else { image::ExtendedColorType::Rgb8 };
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png).write_image(&grid, gw as u32, gh as u32, color)?;
    crate::store::atomic::write_atomic(path, &png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_places_each_image_and_pads_with_white() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.png");
        // 5 grey 3×3 images of value −1 (black), 3 columns → 2 rows.
        save_grid(&Tensor::full([5, 1, 3, 3], -1.0, (Kind::Float, tch::Device::Cpu)), &p).unwrap();
        let img = image::open(&p).unwrap().to_luma8();
        assert_eq!(img.dimensions(), (3 * 5 + 2, 2 * 5 + 2));
        assert_eq!(img.get_pixel(2, 2)[0], 0); // first image
        assert_eq!(img.get_pixel(0, 0)[0], 255); // border
        assert_eq!(img.get_pixel(7, 7)[0], 0); // fifth image: second row, second column
        assert_eq!(img.get_pixel(12, 7)[0], 255); // the empty sixth slot
        let e = save_grid(&Tensor::zeros([2, 2, 3, 3], (Kind::Float, tch::Device::Cpu)), &p).unwrap_err();
        assert!(e.to_string().contains("channels"));
    }
}
