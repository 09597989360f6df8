//! Host batches (plain buffers from `data`) as tensors.

use crate::data::source::{HostBatch, Label};
use tch::Tensor;

/// Labels as the networks want them: `[N, dim]` floats for attributes, `[N]` int64 for classes.
pub fn labels_tensor(labels: &[Label]) -> Tensor {
    match labels.first() {
        Some(Label::Attributes(first)) => {
            let flat: Vec<f32> = labels
                .iter()
                .flat_map(|l| match l {
                    Label::Attributes(v) => v.clone(),
                    Label::Class(_) => unreachable!("one source has one kind of label"),
                })
                .collect();
            Tensor::from_slice(&flat).view([labels.len() as i64, first.len() as i64])
        }
        _ => {
            let idx: Vec<i64> = labels.iter().map(|l| if let Label::Class(c) = l { *c } else { 0 }).collect();
            Tensor::from_slice(&idx)
        }
    }
}

/// A batch's images, `[N,3,S,S]` in [-1, 1], on the CPU.
pub fn images_tensor(hb: &HostBatch) -> Tensor {
    let s = hb.size as i64;
    Tensor::from_slice(&hb.images).view([-1, 3, s, s])
}
