//! Versions the asset URLs by content, so a new build is never served a
//! browser's cached copy of an older stylesheet or script.

use std::hash::{Hash, Hasher};

fn main() {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in ["src/assets/app.css", "src/assets/app.js"] {
        println!("cargo:rerun-if-changed={f}");
        std::fs::read(f).expect("asset").hash(&mut h);
    }
    println!("cargo:rustc-env=YATAI_WEB_ASSETS_HASH={:08x}", h.finish() as u32);
}
