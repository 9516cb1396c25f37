//! Helpers shared by the `data_*` integration tests: temporary folders and tiny images.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh folder under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "delo-test-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small RGB image whose colour depends on `seed`.
pub fn tiny_image(w: u32, h: u32, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (seed.wrapping_mul(53) % 256) as u8,
            ((x * 16 + seed) % 256) as u8,
            ((y * 16 + seed * 7) % 256) as u8,
        ])
    })
}

/// Writes a JPEG (format from the extension), creating parent folders.
pub fn write_image(path: &Path, w: u32, h: u32, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    tiny_image(w, h, seed).save(path).unwrap();
}

pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}
