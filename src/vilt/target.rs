//! The frozen linears of a ViLT block, by the names DeLo's `--targets` uses.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A frozen linear of a ViLT block that can carry experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Q,
    K,
    V,
    O,
    Fc1,
    Fc2,
}

impl Target {
    pub const ALL: [Target; 6] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Fc1,
        Target::Fc2,
    ];

    /// `(d_in, d_out)` for hidden size `d` and MLP size `d_ff`.
    pub fn dims(self, d: usize, d_ff: usize) -> (usize, usize) {
        match self {
            Target::Q | Target::K | Target::V | Target::O => (d, d),
            Target::Fc1 => (d, d_ff),
            Target::Fc2 => (d_ff, d),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Target::Q => "q",
            Target::K => "k",
            Target::V => "v",
            Target::O => "o",
            Target::Fc1 => "fc1",
            Target::Fc2 => "fc2",
        }
    }
    /// `list` sorted in layer order without repeats: the order the adapter and the parameter
    /// layout use, whatever order the targets were given in.
    pub fn canonical(mut list: Vec<Target>) -> Vec<Target> {
        list.sort();
        list.dedup();
        list
    }
}

impl std::str::FromStr for Target {
    type Err = Error;
    /// One name of [`Target::name`] (`q`, `k`, `v`, `o`, `fc1`, `fc2`).
    fn from_str(t: &str) -> Result<Target> {
        Target::ALL
            .into_iter()
            .find(|x| x.name() == t.trim())
            .ok_or_else(|| Error::Msg(format!("target '{t}': expected one of q,k,v,o,fc1,fc2")))
    }
}
