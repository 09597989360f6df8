//! The two non-maximum suppressions facenet-pytorch's MTCNN uses, in float32 as they compute:
//! torchvision's `nms` (IoU of continuous boxes) for the first two stages, and its own numpy
//! `nms_numpy(..., 'Min')` (overlap over the smaller box, pixel-inclusive sizes) for the last.

use super::mtcnn::Cand;

/// torchvision's `nms`: indices kept, highest score first; a box is dropped when its IoU with a
/// kept one exceeds `threshold`.
pub(super) fn nms_iou(boxes: &[Cand], threshold: f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    // torchvision sorts with `stable=True, descending=True`.
    order.sort_by(|&a, &b| boxes[b].score.total_cmp(&boxes[a].score));
    let area = |c: &Cand| (c.b[2] - c.b[0]) * (c.b[3] - c.b[1]);
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (oi, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let bi = &boxes[i];
        let ai = area(bi);
        for &j in &order[oi + 1..] {
            if suppressed[j] {
                continue;
            }
            let bj = &boxes[j];
            let w = (bi.b[2].min(bj.b[2]) - bi.b[0].max(bj.b[0])).max(0.0);
            let h = (bi.b[3].min(bj.b[3]) - bi.b[1].max(bj.b[1])).max(0.0);
            let inter = w * h;
            if inter / (ai + area(bj) - inter) > threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// facenet-pytorch's `nms_numpy(boxes, scores, threshold, 'Min')`: repeatedly keep the
/// highest-scoring box left and drop those whose intersection over the smaller of the two boxes
/// exceeds `threshold`.
pub(super) fn nms_min(boxes: &[Cand], threshold: f32) -> Vec<usize> {
    let area = |c: &Cand| (c.b[2] - c.b[0] + 1.0) * (c.b[3] - c.b[1] + 1.0);
    // np.argsort(s), taken from the end.
    let mut left: Vec<usize> = (0..boxes.len()).collect();
    left.sort_by(|&a, &b| boxes[a].score.total_cmp(&boxes[b].score));
    let mut keep = Vec::new();
    while let Some(i) = left.pop() {
        keep.push(i);
        let bi = &boxes[i];
        left.retain(|&j| {
            let bj = &boxes[j];
            let w = (bi.b[2].min(bj.b[2]) - bi.b[0].max(bj.b[0]) + 1.0).max(0.0);
            let h = (bi.b[3].min(bj.b[3]) - bi.b[1].max(bj.b[1]) + 1.0).max(0.0);
            let inter = w * h;
            inter / area(bi).min(area(bj)) <= threshold
        });
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(b: [f32; 4], score: f32) -> Cand {
        Cand { b, score, reg: [0.0; 4] }
    }

    #[test]
    fn iou_nms_keeps_the_best_of_overlapping_boxes_and_all_disjoint_ones() {
        let boxes = [
            cand([0.0, 0.0, 10.0, 10.0], 0.8),
            cand([1.0, 1.0, 11.0, 11.0], 0.9), // IoU with the first: 81/119 = 0.68
            cand([20.0, 20.0, 30.0, 30.0], 0.5),
        ];
        assert_eq!(nms_iou(&boxes, 0.5), vec![1, 2]);
        assert_eq!(nms_iou(&boxes, 0.7), vec![1, 0, 2]);
    }

    #[test]
    fn min_nms_measures_overlap_against_the_smaller_box() {
        // A small box inside a large one: IoU is small, overlap over the smaller box is 1.
        let boxes = [cand([0.0, 0.0, 99.0, 99.0], 0.9), cand([10.0, 10.0, 19.0, 19.0], 0.95)];
        assert_eq!(nms_min(&boxes, 0.7), vec![1]);
        assert_eq!(nms_iou(&boxes, 0.7), vec![1, 0]);
    }
}
