//! Operand checks of the backend ops, written once for both backends: each function checks an
//! op's operands and returns the dimensions the op runs on, or an [`Error::Shape`] naming the
//! op and what was expected. The CPU and CUDA backends call the same function, so a bad
//! operand gets the same message on either device.

use crate::backend::{AdamW, Gemm};
use crate::ensure_shape;
use crate::error::{Error, Result};
use crate::tensor::{numel, DType, Tensor};

/// Fails unless `a` and `b` have one shape.
pub(crate) fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    ensure_shape!(
        a.shape() == b.shape(),
        op,
        "operands have shapes {:?} and {:?}",
        a.shape(),
        b.shape()
    );
    Ok(())
}

/// `[rows, last]` of a tensor of rank ≥ 1.
pub(crate) fn rows_cols(t: &Tensor) -> (usize, usize) {
    let d = *t.shape().last().unwrap_or(&1);
    (t.numel() / d.max(1), d)
}

/// Resolved dimensions of a batched matmul.
pub(crate) struct MatmulDims {
    pub(crate) batch: usize,
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) b_batched: bool,
    pub(crate) out_shape: Vec<usize>,
}

/// The dimensions of `op(a) · op(b)` ([`crate::backend::Backend::matmul`]).
pub(crate) fn matmul_dims(a: &Tensor, b: &Tensor, g: Gemm) -> Result<MatmulDims> {
    const OP: &str = "matmul";
    ensure_shape!(
        a.rank() >= 2 && b.rank() >= 2,
        OP,
        "operands need rank ≥ 2, got {:?} and {:?}",
        a.shape(),
        b.shape()
    );
    ensure_shape!(
        a.dtype() == b.dtype() && a.dtype() != DType::I32,
        OP,
        "operands must both be f32 or both bf16, got {:?} and {:?}",
        a.dtype(),
        b.dtype()
    );
    let (ar, ac) = (a.dim(-2), a.dim(-1));
    let (br, bc) = (b.dim(-2), b.dim(-1));
    let (m, k) = if g.trans_a { (ac, ar) } else { (ar, ac) };
    let (kb, n) = if g.trans_b { (bc, br) } else { (br, bc) };
    ensure_shape!(
        k == kb,
        OP,
        "inner dimensions differ: {:?}{} · {:?}{}",
        a.shape(),
        if g.trans_a { "ᵀ" } else { "" },
        b.shape(),
        if g.trans_b { "ᵀ" } else { "" }
    );
    let batch_dims = &a.shape()[..a.rank() - 2];
    let b_batched = b.rank() > 2;
    ensure_shape!(
        !b_batched || &b.shape()[..b.rank() - 2] == batch_dims,
        OP,
        "batch dimensions differ: {:?} and {:?}",
        a.shape(),
        b.shape()
    );
    let mut out_shape = batch_dims.to_vec();
    out_shape.extend([m, n]);
    Ok(MatmulDims {
        batch: numel(batch_dims),
        m,
        n,
        k,
        b_batched,
        out_shape,
    })
}

/// [`matmul_dims`] of a product with a bias `[n]` added to every row.
pub(crate) fn matmul_bias_dims(
    a: &Tensor,
    b: &Tensor,
    g: Gemm,
    bias: &Tensor,
) -> Result<MatmulDims> {
    let d = matmul_dims(a, b, g)?;
    ensure_shape!(
        bias.shape() == [d.n],
        "matmul_bias",
        "bias {:?} does not fit the product {:?}",
        bias.shape(),
        d.out_shape
    );
    Ok(d)
}

/// [`matmul_dims`] of a product written into `c`, which must have the product's shape.
pub(crate) fn matmul_into_dims(a: &Tensor, b: &Tensor, g: Gemm, c: &Tensor) -> Result<MatmulDims> {
    let d = matmul_dims(a, b, g)?;
    ensure_shape!(
        c.shape() == d.out_shape,
        "matmul_into",
        "output has shape {:?}, the product {:?}",
        c.shape(),
        d.out_shape
    );
    Ok(d)
}

/// `(rows, d)` of `x [rows, d]` with a bias `[d]` for its rows.
pub(crate) fn bias_dims(op: &'static str, x: &Tensor, b: &Tensor) -> Result<(usize, usize)> {
    let (rows, d) = rows_cols(x);
    ensure_shape!(
        b.shape() == [d],
        op,
        "bias {:?} does not fit input {:?}",
        b.shape(),
        x.shape()
    );
    Ok((rows, d))
}

/// Fails unless an upstream loss gradient has one element.
pub(crate) fn loss_grad(op: &'static str, t: &Tensor) -> Result<()> {
    ensure_shape!(
        t.numel() == 1,
        op,
        "upstream loss gradient must have one element, got {:?}",
        t.shape()
    );
    Ok(())
}

/// `(rows, d)` of a LayerNorm's input `x [rows, d]`, checking its affine `w, b [d]`.
pub(crate) fn layernorm_dims(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
) -> Result<(usize, usize)> {
    let (rows, d) = rows_cols(x);
    ensure_shape!(
        w.shape() == [d] && b.shape() == [d],
        op,
        "weight {:?} / bias {:?} do not fit input {:?}",
        w.shape(),
        b.shape(),
        x.shape()
    );
    Ok((rows, d))
}

/// `(rows, d)` of a LayerNorm backward: `dy` of `x`'s shape, `w [d]`, the forward's per-row
/// `mean` and `rstd` of `rows` elements each.
pub(crate) fn layernorm_backward_dims(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
) -> Result<(usize, usize)> {
    const OP: &str = "layernorm_backward";
    same_shape(OP, dy, x)?;
    let (rows, d) = rows_cols(x);
    ensure_shape!(
        w.shape() == [d] && mean.numel() == rows && rstd.numel() == rows,
        OP,
        "weight {:?}, mean {:?}, rstd {:?} do not fit input {:?}",
        w.shape(),
        mean.shape(),
        rstd.shape(),
        x.shape()
    );
    Ok((rows, d))
}

/// `(B, T, d_h)` of multi-head attention over `q, k, v [B, T, heads·d_h]`.
fn heads_dims(
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
) -> Result<(usize, usize, usize)> {
    same_shape(op, q, k)?;
    same_shape(op, q, v)?;
    ensure_shape!(
        q.rank() == 3 && heads > 0 && q.dim(2).is_multiple_of(heads),
        op,
        "q {:?} cannot split into {heads} heads",
        q.shape()
    );
    Ok((q.dim(0), q.dim(1), q.dim(2) / heads))
}

/// `(B, T, d_h)` of attention with a key mask `[B, T]`.
pub(crate) fn attention_dims(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    heads: usize,
) -> Result<(usize, usize, usize)> {
    let dims = heads_dims("attention", q, k, v, heads)?;
    ensure_shape!(
        mask.shape() == &q.shape()[..2],
        "attention",
        "mask {:?} does not fit q {:?}",
        mask.shape(),
        q.shape()
    );
    Ok(dims)
}

/// `(B, T, d_h)` of the attention backward: `dout` of `q`'s shape and the forward's
/// probabilities `[B, heads, T, T]`.
pub(crate) fn attention_backward_dims(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    probs: &Tensor,
    heads: usize,
) -> Result<(usize, usize, usize)> {
    const OP: &str = "attention_backward";
    same_shape(OP, dout, q)?;
    let (bsz, t, dh) = heads_dims(OP, q, k, v, heads)?;
    ensure_shape!(
        probs.shape() == [bsz, heads, t, t],
        OP,
        "probs {:?} do not fit q {:?}",
        probs.shape(),
        q.shape()
    );
    Ok((bsz, t, dh))
}

/// `(m, row, out_shape)` of gathering rows of `table [m, ..]` by `idx`: the table's rows,
/// the elements per row and the result's shape `idx.shape ++ table.shape[1..]`.
pub(crate) fn gather_dims(table: &Tensor, idx: &Tensor) -> Result<(usize, usize, Vec<usize>)> {
    ensure_shape!(table.rank() >= 1, "gather_rows", "table must have rank ≥ 1");
    let m = table.dim(0);
    let mut shape = idx.shape().to_vec();
    shape.extend(&table.shape()[1..]);
    Ok((m, table.numel() / m.max(1), shape))
}

/// `(row, out_shape)` of summing `dy [idx.shape.., ..]` into `m` rows.
pub(crate) fn scatter_dims(dy: &Tensor, idx: &Tensor, m: usize) -> Result<(usize, Vec<usize>)> {
    let n = idx.numel();
    ensure_shape!(
        n > 0 && dy.numel().is_multiple_of(n) && dy.shape().starts_with(idx.shape()),
        "scatter_add_rows",
        "gradient {:?} does not fit indices {:?}",
        dy.shape(),
        idx.shape()
    );
    let mut shape = vec![m];
    shape.extend(&dy.shape()[idx.rank()..]);
    Ok((dy.numel() / n, shape))
}

/// `(B, T1, T2, d)` of `[B, T1, d] ; [B, T2, d]`.
pub(crate) fn concat_dims(a: &Tensor, b: &Tensor) -> Result<(usize, usize, usize, usize)> {
    ensure_shape!(
        a.rank() == 3 && b.rank() == 3 && a.dim(0) == b.dim(0) && a.dim(2) == b.dim(2),
        "concat_seq",
        "cannot concatenate {:?} and {:?} along the sequence",
        a.shape(),
        b.shape()
    );
    Ok((a.dim(0), a.dim(1), b.dim(1), a.dim(2)))
}

/// `(B, T, d)` of `x [B, T, d]` split after `t1 ≤ T` positions.
pub(crate) fn split_dims(x: &Tensor, t1: usize) -> Result<(usize, usize, usize)> {
    ensure_shape!(
        x.rank() == 3 && t1 <= x.dim(1),
        "split_seq",
        "cannot split {:?} after {t1}",
        x.shape()
    );
    Ok((x.dim(0), x.dim(1), x.dim(2)))
}

/// `(B, T, d)` of a masked mean over `x [B, T, d]` with `mask [B, T]`.
pub(crate) fn masked_dims(x: &[usize], mask: &Tensor) -> Result<(usize, usize, usize)> {
    ensure_shape!(
        x.len() == 3 && mask.shape() == &x[..2],
        "masked_mean",
        "input {x:?} and mask {:?} must be [B, T, d] and [B, T]",
        mask.shape()
    );
    Ok((x[0], x[1], x[2]))
}

/// `(B, T, d)` of the masked mean's backward: `dy [B, d]`, `mask [B, T]`.
pub(crate) fn masked_backward_dims(dy: &Tensor, mask: &Tensor) -> Result<(usize, usize, usize)> {
    ensure_shape!(
        dy.rank() == 2 && mask.rank() == 2 && dy.dim(0) == mask.dim(0),
        "masked_mean_backward",
        "gradient {:?} does not fit mask {:?}",
        dy.shape(),
        mask.shape()
    );
    Ok((mask.dim(0), mask.dim(1), dy.dim(1)))
}

/// `(rows, d)` of the cosine's backward: `a`, `b` `[rows, d]` and one gradient per row.
pub(crate) fn cosine_backward_dims(dc: &Tensor, a: &Tensor, b: &Tensor) -> Result<(usize, usize)> {
    const OP: &str = "cosine_backward";
    same_shape(OP, a, b)?;
    let (rows, d) = rows_cols(a);
    ensure_shape!(
        dc.numel() == rows,
        OP,
        "gradient {:?} does not fit {rows} rows",
        dc.shape()
    );
    Ok((rows, d))
}

/// `(B, C)` of a loss over `logits [B, C]` with `labels` rows of targets.
pub(crate) fn loss_dims(
    op: &'static str,
    logits: &Tensor,
    labels: usize,
) -> Result<(usize, usize)> {
    ensure_shape!(
        logits.rank() == 2,
        op,
        "logits must be [B, C], got {:?}",
        logits.shape()
    );
    ensure_shape!(
        labels == logits.dim(0),
        op,
        "{labels} labels for {} rows of logits",
        logits.dim(0)
    );
    Ok((logits.dim(0), logits.dim(1)))
}

/// Fails unless the AdamW operands share one shape and the step number is at least 1.
pub(crate) fn adamw_operands(
    params: &Tensor,
    grads: &Tensor,
    m: &Tensor,
    v: &Tensor,
    hp: &AdamW,
) -> Result<()> {
    const OP: &str = "adamw";
    for t in [grads, m, v] {
        same_shape(OP, params, t)?;
    }
    ensure_shape!(hp.step >= 1, OP, "step numbers start at 1");
    Ok(())
}

/// Checks the operands of [`crate::backend::Backend::copy_rows_where`] and returns
/// `(rows, row)`: the number of rows and the elements per row.
pub(crate) fn row_choice_dims(
    dst: &Tensor,
    src: &Tensor,
    choice: &Tensor,
    k: usize,
    n: usize,
) -> Result<(usize, usize)> {
    const OP: &str = "copy_rows_where";
    ensure_shape!(
        dst.shape() == src.shape() && dst.rank() >= 1,
        OP,
        "source {:?} and destination {:?} must have one shape of rank ≥ 1",
        src.shape(),
        dst.shape()
    );
    let rows = dst.dim(0);
    ensure_shape!(
        choice.shape() == [rows],
        OP,
        "the choices {:?} must be one per row of {:?}",
        choice.shape(),
        dst.shape()
    );
    ensure_shape!(k < n, OP, "tensor {k} of {n} does not exist");
    Ok((rows, dst.numel() / rows.max(1)))
}

/// Checks the `parts` of [`crate::backend::Backend::add_assign_parts`] against a flat `dst` of
/// `len` elements: in range and disjoint.
pub(crate) fn check_parts(len: usize, parts: &[(usize, &Tensor)]) -> Result<()> {
    let mut ranges: Vec<(usize, usize)> = parts
        .iter()
        .filter(|(_, t)| t.numel() > 0)
        .map(|(o, t)| (*o, o + t.numel()))
        .collect();
    ranges.sort_unstable();
    for (i, &(start, end)) in ranges.iter().enumerate() {
        if end > len {
            return Err(Error::shape(
                "add_assign_parts",
                format!("part {start}..{end} is outside the {len} elements of the destination"),
            ));
        }
        if i > 0 && start < ranges[i - 1].1 {
            return Err(Error::shape(
                "add_assign_parts",
                format!("parts {:?} and {start}..{end} overlap", ranges[i - 1]),
            ));
        }
    }
    Ok(())
}
