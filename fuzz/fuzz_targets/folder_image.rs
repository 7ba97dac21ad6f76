#![no_main]
//! The image-folder reader on a folder of one image: decoding (PNG, JPEG, whatever the content
//! is), conversion to grey or RGB, centre crop and resize. The first byte picks the channels
//! (odd: RGB), the second the output size (1 to 64); the rest is the file.
use libfuzzer_sys::fuzz_target;
use sadajem::data::{folder, FolderOptions, Split};

mod common;

fuzz_target!(|data: &[u8]| {
    let [c, s, file @ ..] = data else { return };
    let opts = FolderOptions {
        channels: if c & 1 == 1 { 3 } else { 1 },
        size: 1 + (*s as usize) % 64,
    };
    let dir = common::scratch().join("images");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("x.png"), file).unwrap();
    if let Ok(set) = folder::load(&dir, Split::Train, opts) {
        common::check(&set);
        assert_eq!(
            (set.n, set.channels, set.height),
            (1, opts.channels, opts.size)
        );
    }
});
