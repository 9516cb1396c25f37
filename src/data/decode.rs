//! Image files to RGB8 pixels, reading what Pillow's `Image.open(f).convert("RGB")` reads.
//!
//! The reference loaders of CMML (MAP, RebQ) open images with Pillow, so a dataset that works
//! there must work here, with the same pixels:
//! - **Formats**: JPEG, PNG, GIF, BMP, TIFF, WebP, ICO, PNM (PBM/PGM/PPM) and TGA, recognised by
//!   their content, not their file name (a GIF saved as `x.jpg` is a GIF). Animated images
//!   give their first frame. Grey is replicated, alpha and transparency are dropped (not
//!   composited), as `convert("RGB")` does.
//! - **Truncated files** are errors, as in Pillow ("image file is truncated"): decoders that
//!   would fill the missing part with grey or stop early without a word (JPEG, lossy WebP)
//!   are checked for the end of their data (JPEG's end-of-image marker, the size a RIFF
//!   header declares).
//! - Two gaps of the `image` crate are bridged: TGA, which has no signature, is recognised by
//!   Pillow's header test, and an ICO whose largest image is an RGB PNG (the crate wants
//!   RGBA) has that PNG decoded directly.
//! - **Size**: Pillow refuses images of more than 2 × `Image.MAX_IMAGE_PIXELS` pixels
//!   (`DecompressionBombError`); so does delo, with an error that gives the size and the way
//!   out. Below that, images decode whatever their bit depth or channel count (the `image`
//!   crate's own 512 MiB allocation limit would refuse some that Pillow reads).

use std::io::Cursor;
use std::path::Path;

use image::{ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::{Error, Result};

/// Pillow's `Image.MAX_IMAGE_PIXELS` (`1024 * 1024 * 1024 // 4 // 3`): above it Pillow warns.
pub const PILLOW_MAX_IMAGE_PIXELS: u64 = 1024 * 1024 * 1024 / 4 / 3;

/// The most pixels an image may have: above twice `MAX_IMAGE_PIXELS` Pillow raises
/// `DecompressionBombError`. Also bounds the memory one decode takes (about 3 bytes a pixel,
/// 4–8 for images with alpha or 16-bit channels).
pub const MAX_PIXELS: u64 = 2 * PILLOW_MAX_IMAGE_PIXELS;

/// The formats read, for error messages and the README.
pub const FORMATS: &str = "JPEG, PNG, GIF, BMP, TIFF, WebP, ICO, PNM and TGA";

/// Decodes an image file's bytes to RGB8 (first frame, alpha dropped); `source` names the
/// file in errors.
pub fn decode_rgb(bytes: &[u8], source: &Path) -> Result<RgbImage> {
    if let Some(png) = ico_png_entry(bytes) {
        // The `image` crate refuses a PNG icon without alpha; Pillow reads it.
        return decode_rgb(png, source);
    }
    // TGA has no signature: Pillow recognises it by a plausible header, and so does delo.
    let guessed = image::guess_format(bytes)
        .ok()
        .or_else(|| looks_like_tga(bytes).then_some(ImageFormat::Tga));
    let format = guessed.ok_or_else(|| {
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Error::format(
            source,
            format!(
                "not an image file delo reads (expected {FORMATS}; the file starts with bytes \
                 [{}], {} bytes in all)",
                head.join(" "),
                bytes.len()
            ),
        )
    })?;
    let name = format_name(format);
    let complete = match format {
        ImageFormat::Jpeg => check_jpeg_complete(bytes),
        ImageFormat::WebP => check_riff_complete(bytes),
        _ => Ok(()),
    };
    complete.map_err(|m| Error::format(source, m))?;
    let reader = || {
        let mut r = ImageReader::with_format(Cursor::new(bytes), format);
        // The pixel count is checked below (Pillow's limit); the crate's own allocation cap
        // would refuse 16-bit and RGBA images that Pillow reads.
        r.limits(Limits::no_limits());
        r
    };
    let (w, h) = reader().into_dimensions().map_err(|e| {
        Error::format(
            source,
            format!("cannot read the {name} header: {}", describe(&e)),
        )
    })?;
    check_size(w, h).map_err(|m| Error::format(source, m))?;
    let img = reader().decode().map_err(|e| {
        Error::format(
            source,
            format!("cannot decode the {name} image: {}", describe(&e)),
        )
    })?;
    Ok(img.into_rgb8())
}

/// Errors (with the size and what to do) for an image of more pixels than Pillow reads.
pub fn check_size(w: u32, h: u32) -> std::result::Result<(), String> {
    let pixels = u64::from(w) * u64::from(h);
    if pixels > MAX_PIXELS {
        return Err(format!(
            "the image is {w}×{h} = {pixels} pixels, more than the {MAX_PIXELS} that Pillow (and \
             delo) will decode; the model needs at most 640 pixels a side, so shrink the file \
             first, e.g. `convert IN -resize 2048x2048 OUT` (ImageMagick) or Pillow's \
             `Image.open(IN).reduce(8).save(OUT)`"
        ));
    }
    Ok(())
}

/// A JPEG must reach its end-of-image marker. Pillow's decoder reads up to it and raises
/// "image file is truncated" when the file ends first (even when only the marker is missing),
/// while the `image` crate's decoder fills the missing rows with grey and reports nothing.
/// Checked before decoding, so that a file cut inside its header says "truncated" too.
fn check_jpeg_complete(bytes: &[u8]) -> std::result::Result<(), String> {
    if has_eoi_after_scan(bytes) {
        return Ok(());
    }
    Err(format!(
        "the JPEG data ends before its end-of-image marker: the file is truncated ({} bytes); \
         Pillow refuses it too (\"image file is truncated\")",
        bytes.len()
    ))
}

/// A WebP file (RIFF) must hold the bytes its header declares: libwebp, under Pillow, refuses a
/// shorter one, while the `image` crate may decode a lossy image without its last bytes.
fn check_riff_complete(bytes: &[u8]) -> std::result::Result<(), String> {
    let declared = bytes
        .get(4..8)
        .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])) + 8);
    match declared {
        Some(n) if n <= bytes.len() as u64 => Ok(()),
        Some(n) => Err(format!(
            "the WebP file is truncated: its header declares {n} bytes, the file has {}",
            bytes.len()
        )),
        None => Err(format!(
            "the WebP file is truncated: {} bytes, not even a header",
            bytes.len()
        )),
    }
}

/// Pillow's test for a TGA header (`TgaImagePlugin`): colour-map type 0 or 1, a known image
/// type, a non-empty size and a pixel depth of 1, 8, 16, 24 or 32 bits.
fn looks_like_tga(b: &[u8]) -> bool {
    if b.len() < 18 {
        return false;
    }
    let (w, h) = (
        u16::from_le_bytes([b[12], b[13]]),
        u16::from_le_bytes([b[14], b[15]]),
    );
    b[1] <= 1
        && matches!(b[2], 1 | 2 | 3 | 9 | 10 | 11)
        && w > 0
        && h > 0
        && matches!(b[16], 1 | 8 | 16 | 24 | 32)
}

/// The PNG data of an ICO file's largest image (the one Pillow opens), when that image is
/// stored as a PNG; `None` for other files and for icons whose largest image is a bitmap.
fn ico_png_entry(b: &[u8]) -> Option<&[u8]> {
    if b.get(..4)? != [0, 0, 1, 0] {
        return None;
    }
    let count = usize::from(u16::from_le_bytes([*b.get(4)?, *b.get(5)?]));
    let side = |v: u8| if v == 0 { 256u32 } else { u32::from(v) };
    let mut best: Option<(u32, &[u8])> = None;
    for e in 0..count {
        let d = b.get(6 + 16 * e..6 + 16 * (e + 1))?;
        let size = u32::from_le_bytes([d[8], d[9], d[10], d[11]]) as usize;
        let offset = u32::from_le_bytes([d[12], d[13], d[14], d[15]]) as usize;
        // A file cut short keeps what it has: the PNG decoder then says whether that is
        // enough (Pillow reads a PNG that lacks only its end chunk's checksum).
        let rest = b.get(offset..)?;
        let data = &rest[..size.min(rest.len())];
        let area = side(d[0]) * side(d[1]);
        if best.is_none_or(|(a, _)| area > a) {
            best = Some((area, data));
        }
    }
    best.map(|(_, data)| data)
        .filter(|d| d.starts_with(b"\x89PNG\r\n\x1a\n"))
}

/// Whether an end-of-image marker (FF D9) follows the first start-of-scan marker (FF DA).
/// Inside entropy-coded data FF is always followed by 00 or a restart marker, so FF D9 there
/// is the real end; an EXIF thumbnail's EOI comes before the main image's first scan.
fn has_eoi_after_scan(bytes: &[u8]) -> bool {
    let Some(sos) = bytes.windows(2).position(|w| w == [0xFF, 0xDA]) else {
        return false;
    };
    bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// The format's usual name.
fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::Gif => "GIF",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        ImageFormat::WebP => "WebP",
        ImageFormat::Ico => "ICO",
        ImageFormat::Pnm => "PNM",
        ImageFormat::Tga => "TGA",
        _ => "image",
    }
}

/// An `image` error in words: truncation and unsupported formats say so plainly.
fn describe(e: &image::ImageError) -> String {
    use image::ImageError as E;
    match e {
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the file ends before the image does (truncated)".into()
        }
        E::Unsupported(u) => format!("{u} (delo reads {FORMATS}, as Pillow does)"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_limit_is_pillows() {
        // 2 × 89 478 485 pixels pass, one more does not (Pillow: DecompressionBombError).
        assert_eq!(MAX_PIXELS, 178_956_970);
        assert!(check_size(13_377, 13_377).is_ok());
        assert!(check_size(178_956_970, 1).is_ok());
        let e = check_size(178_956_971, 1).unwrap_err();
        assert!(e.contains("178956971 pixels"), "{e}");
        let e = check_size(13_500, 13_500).unwrap_err();
        assert!(e.contains("13500×13500") && e.contains("shrink"), "{e}");
    }

    #[test]
    fn eoi_search_starts_at_the_first_scan() {
        assert!(has_eoi_after_scan(&[
            0xFF, 0xD8, 0xFF, 0xDA, 1, 2, 0xFF, 0xD9
        ]));
        // An EOI before the scan (an EXIF thumbnail's) does not count.
        assert!(!has_eoi_after_scan(&[0xFF, 0xD9, 0xFF, 0xDA, 1, 2, 3]));
        assert!(!has_eoi_after_scan(&[0xFF, 0xD8, 0xFF, 0xD9]));
    }

    #[test]
    fn unknown_bytes_name_the_file_and_the_formats() {
        let e = decode_rgb(b"hello world", Path::new("x/a.jpg")).unwrap_err();
        let e = e.to_string();
        assert!(e.starts_with("x/a.jpg: not an image"), "{e}");
        assert!(e.contains("68 65 6c 6c") && e.contains("GIF"), "{e}");
    }
}
