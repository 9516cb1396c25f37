//! Safetensors files: reading any of them into host tensors and writing them atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::tensor::{CpuStorage, Tensor};

/// Converts one stored tensor to a host tensor: floats (F32, F16, BF16, F64) become f32,
/// integers (I64, I32, U8, BOOL) become i32; `file` and `name` label errors.
pub fn view_to_tensor(view: &TensorView<'_>, file: &Path, name: &str) -> Result<Tensor> {
    let b = view.data();
    let f32s = |v: Vec<f32>| Tensor::from_f32(v, view.shape());
    let i32s = |v: Vec<i32>| Tensor::from_i32(v, view.shape());
    match view.dtype() {
        Dtype::F32 => f32s(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F16 => f32s(
            b.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        Dtype::BF16 => f32s(
            b.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        Dtype::F64 => f32s(
            b.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
        ),
        Dtype::I32 => i32s(
            b.chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::I64 => {
            let v: Vec<i64> = b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            let out: Option<Vec<i32>> = v.iter().map(|&x| i32::try_from(x).ok()).collect();
            i32s(out.ok_or_else(|| {
                Error::format(
                    file,
                    format!("tensor `{name}` holds an i64 outside the i32 range"),
                )
            })?)
        }
        Dtype::U8 | Dtype::BOOL => i32s(b.iter().map(|&x| x as i32).collect()),
        other => Err(Error::format(
            file,
            format!("tensor `{name}` has dtype {other:?}; expected a float or integer type"),
        )),
    }
}

/// Every tensor of a safetensors file, by name.
pub fn read_file(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::format(
            path,
            format!("not a valid safetensors file (truncated or corrupt?): {e}"),
        )
    })?;
    st.iter()
        .map(|(name, view)| Ok((name.to_string(), view_to_tensor(&view, path, name)?)))
        .collect()
}

/// Writes host-or-device tensors (f32, bf16, i32) as a safetensors file, atomically.
pub fn write_file(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let host: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_device(&crate::Device::Cpu)?)))
        .collect::<Result<_>>()?;
    let mut views: BTreeMap<String, TensorView<'_>> = BTreeMap::new();
    for (name, t) in &host {
        let (dtype, bytes): (Dtype, &[u8]) = match t.cpu()? {
            CpuStorage::F32(_) => (Dtype::F32, bytemuck::cast_slice(t.f32s()?)),
            CpuStorage::BF16(_) => (Dtype::BF16, bytemuck::cast_slice(t.bf16s()?)),
            CpuStorage::I32(_) => (Dtype::I32, bytemuck::cast_slice(t.i32s()?)),
        };
        let view = TensorView::new(dtype, t.shape().to_vec(), bytes)
            .map_err(|e| Error::format(path, format!("tensor `{name}`: {e}")))?;
        views.insert(name.clone(), view);
    }
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| Error::format(path, format!("serialising safetensors: {e}")))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to a sibling temporary file, syncs it, renames it over `path` and syncs the
/// folder, so that a crash, a kill or a full disk never leaves a half-written file under the
/// final name, and a file that was renamed survives a power cut. On an error the temporary
/// file is removed and `path` is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut tmp = PathBuf::from(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tmp.set_file_name(format!(".{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        let (first, second) = bytes.split_at(bytes.len() / 2);
        f.write_all(first)?;
        crate::fault::during_write(path)?;
        f.write_all(second)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_parent(path)
}

/// Syncs the folder holding `path`, so that a rename or removal in it is on disk. (Unix only:
/// elsewhere a folder cannot be opened to be synced, and renames are journaled by the system.)
fn sync_parent(path: &Path) -> Result<()> {
    if cfg!(not(unix)) {
        return Ok(());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}
