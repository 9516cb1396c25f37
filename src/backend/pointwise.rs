//! Pointwise activations, each defined in one place: its name, its CPU reference forward and
//! backward, the value its backward reads, and (by that name) its two CUDA kernels in
//! `kernels/elementwise.cu`. Both backends, the tape ([`crate::autograd::Tape::unary`]), the
//! kernel table and the tests iterate [`Unary::ALL`], so a new activation is one entry below
//! plus its two kernels.
//!
//! CUDA kernels of an activation `name` are `ew_{name}_f32(const float* x, float* out,
//! long long n)` and `ew_{name}_backward_f32(const float* dy, const float* saved, float* out,
//! long long n)`.

use crate::backend::cpu_simd;

/// Which value an activation's backward reads beside the upstream gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved {
    /// The forward's input `x`.
    Input,
    /// The forward's output `y` (cheaper where f' is a function of f, as for tanh).
    Output,
}

macro_rules! unary_ops {
    ($( $(#[$doc:meta])* $op:ident : $name:literal, $saved:ident, $fwd:path, $bwd:path; )*) => {
        /// An elementwise activation `y = f(x)`, f32.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Unary {
            $( $(#[$doc])* $op, )*
        }

        impl Unary {
            /// Every activation, in declaration order.
            pub const ALL: &'static [Unary] = &[$( Unary::$op ),*];

            /// The activation's name, as ops and errors report it.
            pub fn name(self) -> &'static str {
                match self { $( Unary::$op => $name, )* }
            }

            /// Its backward's name, as errors report it.
            pub fn backward_name(self) -> &'static str {
                match self { $( Unary::$op => concat!($name, "_backward"), )* }
            }

            /// What [`Unary::backward_cpu`] and the backward kernel read beside `dy`.
            pub fn saves(self) -> Saved {
                match self { $( Unary::$op => Saved::$saved, )* }
            }

            /// The CUDA kernels `(forward, backward)`.
            pub fn kernels(self) -> (&'static str, &'static str) {
                match self {
                    $( Unary::$op => (
                        concat!("ew_", $name, "_f32"),
                        concat!("ew_", $name, "_backward_f32"),
                    ), )*
                }
            }

            /// The CPU reference: `y[i] = f(x[i])` over one chunk (`x`, `y` of one length).
            pub fn forward_cpu(self, x: &[f32], y: &mut [f32]) {
                match self { $( Unary::$op => $fwd(x, y), )* }
            }

            /// The CPU reference of the backward: `dx[i] = dy[i] · f'(…)` from the value
            /// [`Unary::saves`] names, over one chunk (all of one length).
            pub fn backward_cpu(self, dy: &[f32], saved: &[f32], dx: &mut [f32]) {
                match self { $( Unary::$op => $bwd(dy, saved, dx), )* }
            }
        }
    };
}

unary_ops! {
    /// Exact GELU, `x · Φ(x)` with the error function (ViLT's MLP activation); its backward
    /// reads `x`.
    Gelu: "gelu", Input, cpu_simd::gelu, cpu_simd::gelu_backward;
    /// `tanh x` (ViLT's pooler); its backward reads `y`: `dy · (1 − y²)`.
    Tanh: "tanh", Output, tanh, tanh_backward;
}

fn tanh(x: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y = x.tanh());
}

fn tanh_backward(dy: &[f32], y: &[f32], dx: &mut [f32]) {
    dx.iter_mut()
        .zip(dy.iter().zip(y))
        .for_each(|(d, (&g, &t))| *d = g * (1.0 - t * t));
}
