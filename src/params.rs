//! Trainable parameters in one flat f32 buffer, with a flat gradient buffer and the AdamW
//! moments beside it, so that one kernel launch updates every parameter of a task.

use crate::autograd::{Grads, ParamId, Tape, Var};
use crate::backend::{AdamW, Device};
use crate::error::{Error, Result};
use crate::tensor::{numel, DType, Tensor};

/// Where one parameter lives in the flat buffers.
#[derive(Clone, Debug)]
pub struct ParamSlot {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
}

/// A [`ParamSet`]'s optimiser state on the host (see [`ParamSet::snapshot`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSnapshot {
    pub values: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub step: u32,
}

pub struct ParamSet {
    device: Device,
    slots: Vec<ParamSlot>,
    values: Tensor,
    grads: Tensor,
    m: Tensor,
    v: Tensor,
    step: u32,
}

impl ParamSet {
    /// Packs named host tensors (f32) into flat buffers on `device`.
    pub fn new(device: &Device, params: Vec<(String, Tensor)>) -> Result<ParamSet> {
        let mut flat = Vec::new();
        let mut slots = Vec::with_capacity(params.len());
        for (name, t) in params {
            let values = t
                .to_vec_f32()
                .map_err(|e| Error::Msg(format!("parameter {name}: {e}")))?;
            slots.push(ParamSlot {
                name,
                shape: t.shape().to_vec(),
                offset: flat.len(),
            });
            flat.extend(values);
        }
        let n = flat.len();
        let be = device.backend();
        Ok(ParamSet {
            device: device.clone(),
            slots,
            values: Tensor::from_f32(flat, &[n])?.to_device(device)?,
            grads: be.zeros(&[n], DType::F32)?,
            m: be.zeros(&[n], DType::F32)?,
            v: be.zeros(&[n], DType::F32)?,
            step: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
    /// Total number of trainable scalars.
    pub fn numel(&self) -> usize {
        self.values.numel()
    }
    pub fn slots(&self) -> &[ParamSlot] {
        &self.slots
    }
    pub fn id(&self, name: &str) -> Option<ParamId> {
        self.slots.iter().position(|s| s.name == name).map(ParamId)
    }
    /// The current value of one parameter (a view into the flat buffer).
    pub fn value(&self, id: ParamId) -> Result<Tensor> {
        let s = &self.slots[id.0];
        self.values.view(s.offset, &s.shape)
    }
    /// The accumulated gradient of one parameter.
    pub fn grad(&self, id: ParamId) -> Result<Tensor> {
        let s = &self.slots[id.0];
        self.grads.view(s.offset, &s.shape)
    }
    pub fn flat_values(&self) -> &Tensor {
        &self.values
    }
    pub fn steps_taken(&self) -> u32 {
        self.step
    }

    /// Puts a parameter on the tape as a trainable leaf.
    pub fn bind(&self, tape: &mut Tape, id: ParamId) -> Result<Var> {
        Ok(tape.param(id, self.value(id)?))
    }

    /// Zeroes the flat gradient buffer in place.
    pub fn zero_grads(&mut self) -> Result<()> {
        self.device.backend().fill_zero(&mut self.grads)
    }

    /// Adds one backward pass's gradients into the flat gradient buffer (`+=`), all of them
    /// in one [`crate::backend::Backend::add_assign_parts`].
    pub fn accumulate(&mut self, grads: &Grads) -> Result<()> {
        let parts = grads
            .by_param
            .iter()
            .map(|(id, g)| {
                let s = self.slots.get(id.0).ok_or_else(|| {
                    Error::Msg(format!("gradient for unknown parameter #{}", id.0))
                })?;
                if g.shape() != s.shape.as_slice() {
                    return Err(Error::shape(
                        "accumulate",
                        format!(
                            "gradient {:?} for parameter {} of shape {:?}",
                            g.shape(),
                            s.name,
                            s.shape
                        ),
                    ));
                }
                Ok((s.offset, g))
            })
            .collect::<Result<Vec<_>>>()?;
        self.device
            .backend()
            .add_assign_parts(&mut self.grads, &parts)
    }

    /// One AdamW step over every parameter with the accumulated gradients.
    pub fn adamw_step(
        &mut self,
        lr: f32,
        betas: (f32, f32),
        eps: f32,
        weight_decay: f32,
    ) -> Result<()> {
        self.step += 1;
        let hp = AdamW {
            lr,
            beta1: betas.0,
            beta2: betas.1,
            eps,
            weight_decay,
            step: self.step,
        };
        self.device
            .backend()
            .adamw(&mut self.values, &self.grads, &mut self.m, &mut self.v, hp)
    }

    /// The optimiser's whole state on the host: the flat values, AdamW's first and second
    /// moments (each `[numel]` f32) and the number of steps taken. Reading it waits for the
    /// device, so on CUDA every step queued before has finished.
    pub fn snapshot(&self) -> Result<ParamSnapshot> {
        Ok(ParamSnapshot {
            values: self.values.to_vec_f32()?,
            m: self.m.to_vec_f32()?,
            v: self.v.to_vec_f32()?,
            step: self.step,
        })
    }

    /// Puts back a state taken by [`ParamSet::snapshot`] of a set with the same slots.
    /// Errors: a snapshot whose buffers are not `[numel]` long.
    pub fn restore(&mut self, snap: ParamSnapshot) -> Result<()> {
        let n = self.numel();
        for (what, len) in [
            ("values", snap.values.len()),
            ("m", snap.m.len()),
            ("v", snap.v.len()),
        ] {
            if len != n {
                return Err(Error::shape(
                    "ParamSet::restore",
                    format!("{what} holds {len} values; the parameters have {n}"),
                ));
            }
        }
        let put = |v: Vec<f32>| Tensor::from_f32(v, &[n])?.to_device(&self.device);
        self.values = put(snap.values)?;
        self.m = put(snap.m)?;
        self.v = put(snap.v)?;
        self.step = snap.step;
        Ok(())
    }

    /// Every parameter as a named host tensor.
    pub fn to_host(&self) -> Result<Vec<(String, Tensor)>> {
        let all = self.values.to_vec_f32()?;
        self.slots
            .iter()
            .map(|s| {
                Ok((
                    s.name.clone(),
                    Tensor::from_f32(all[s.offset..s.offset + numel(&s.shape)].to_vec(), &s.shape)?,
                ))
            })
            .collect()
    }
}
