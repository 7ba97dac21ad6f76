#![no_main]
//! The layered config on arbitrary text: a TOML file, then `--set` lines after a line `---`.
//! A config that is accepted must survive the round trip through the run's config.toml.
use libfuzzer_sys::fuzz_target;
use sadajem::config::{Config, Sources};

mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, sets) = text.split_once("\n---\n").unwrap_or((text, ""));
    let overrides: Vec<String> = sets.lines().map(str::to_string).collect();
    let path = common::put("config.toml", file.as_bytes());
    if let Ok(cfg) = Config::from_sources(&Sources {
        file: Some(&path),
        overrides: &overrides,
        ..Default::default()
    }) {
        let saved = common::put("saved.toml", cfg.to_toml().as_bytes());
        assert_eq!(Config::load(&saved).expect("a saved config loads"), cfg);
    }
});
