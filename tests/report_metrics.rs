//! The CMML metrics against hand-computed values: top-1 accuracy, F1-macro (torchmetrics'
//! conventions for classes without positives), AP and FG (paper eq. 11).

use delo::report::metrics::{
    argmax, average_performance, f1_macro, f1_macro_from_logits, forgetting, predict_multi_hot,
    top1_accuracy, MultiLabelCounts,
};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// A lower-triangular matrix from ragged rows (row t has t + 1 entries).
fn tri(rows: &[&[f64]]) -> Vec<Vec<Option<f64>>> {
    let t = rows.len();
    rows.iter()
        .map(|r| (0..t).map(|j| r.get(j).copied()).collect())
        .collect()
}

#[test]
fn top1_accuracy_in_percent() {
    assert!(close(
        top1_accuracy(&[0, 1, 2, 3], &[0, 1, 0, 3]).unwrap(),
        75.0
    ));
    assert!(close(top1_accuracy(&[4, 4, 4], &[4, 4, 4]).unwrap(), 100.0));
    assert!(close(top1_accuracy(&[1, 2], &[0, 0]).unwrap(), 0.0));
    assert!(close(
        top1_accuracy(&[7, 0, 0], &[7, 1, 2]).unwrap(),
        100.0 / 3.0
    ));
    assert!(top1_accuracy(&[], &[]).is_err(), "no samples is undefined");
    assert!(top1_accuracy(&[0], &[0, 1]).is_err(), "length mismatch");
}

#[test]
fn argmax_takes_first_maximum_and_skips_nan() {
    assert_eq!(argmax(&[0.1, 0.9, 0.9, -1.0]), Some(1));
    assert_eq!(argmax(&[f32::NAN, 0.2, 0.1]), Some(1));
    assert_eq!(argmax(&[f32::NAN, f32::NAN]), Some(0));
    assert_eq!(argmax(&[]), None);
}

#[test]
fn f1_macro_hand_computed() {
    // 3 samples × 3 classes.
    //   class 0: TP 1 (s0), FN 1 (s1), FP 1 (s2) → 2·1 / (2 + 1 + 1) = 50 %
    //   class 1: TP 2 (s1, s2), no FP/FN        → 100 %
    //   class 2: no positives, no predictions    → 0 % (torchmetrics)
    //   macro = (50 + 100 + 0) / 3 = 50 %
    let t = [true, false, false, true, true, false, false, true, false];
    let p = [true, false, false, false, true, false, true, true, false];
    assert!(close(f1_macro(&p, &t, 3).unwrap(), 50.0));

    let mut c = MultiLabelCounts::new(3);
    for (pi, ti) in p.chunks(3).zip(t.chunks(3)) {
        c.add(pi, ti).unwrap();
    }
    assert_eq!(c.tp, vec![1, 2, 0]);
    assert_eq!(c.fp, vec![1, 0, 0]);
    assert_eq!(c.fn_, vec![1, 0, 0]);
    assert_eq!(c.f1_per_class(), vec![50.0, 100.0, 0.0]);
}

#[test]
fn f1_class_without_positives_but_with_predictions_scores_zero() {
    // Class 2 has no positives but is predicted for s0: TP = 0 → F1 = 0; class 0 and 1
    // perfect. Macro = (100 + 100 + 0) / 3.
    let t = [true, false, false, false, true, false];
    let p = [true, false, true, false, true, false];
    let mut c = MultiLabelCounts::new(3);
    for (pi, ti) in p.chunks(3).zip(t.chunks(3)) {
        c.add(pi, ti).unwrap();
    }
    assert_eq!(c.fp, vec![0, 0, 1]);
    assert_eq!(c.f1_per_class(), vec![100.0, 100.0, 0.0]);
    assert!(close(f1_macro(&p, &t, 3).unwrap(), 200.0 / 3.0));
}

#[test]
fn f1_perfect_and_all_wrong() {
    // 4 samples × 2 classes, every class has positives.
    let t = [true, false, false, true, true, true, false, false];
    assert!(close(f1_macro(&t, &t, 2).unwrap(), 100.0));
    // Every decision flipped: TP = 0 for every class → 0.
    let wrong: Vec<bool> = t.iter().map(|x| !x).collect();
    assert!(close(f1_macro(&wrong, &t, 2).unwrap(), 0.0));
    // Predicting nothing at all is also 0 (TP = 0 everywhere).
    assert!(close(f1_macro(&[false; 8], &t, 2).unwrap(), 0.0));
}

#[test]
fn f1_from_logits_uses_sigmoid_above_half() {
    // logit 0 is sigmoid 0.5, which is not > 0.5: not predicted.
    assert_eq!(
        predict_multi_hot(&[0.0, 1e-6, -3.0, 2.0]),
        vec![false, true, false, true]
    );
    // 2 samples × 2 classes: predictions [1,0],[1,0]; targets [1,0],[0,1].
    //   class 0: TP 1, FP 1 → 2/3; class 1: FN 1 → 0. Macro = 100/3.
    let logits = [2.0, -1.0, 0.5, 0.0];
    let targets = [1u8, 0, 0, 1];
    assert!(close(
        f1_macro_from_logits(&logits, &targets, 2).unwrap(),
        100.0 / 3.0
    ));
}

#[test]
fn f1_rejects_bad_shapes() {
    assert!(f1_macro(&[true; 4], &[true; 4], 0).is_err());
    assert!(f1_macro(&[true; 4], &[true; 6], 2).is_err());
    assert!(f1_macro(&[true; 5], &[true; 5], 2).is_err());
    assert!(MultiLabelCounts::new(3)
        .add(&[true], &[true, false, true])
        .is_err());
}

#[test]
fn ap_and_fg_hand_computed() {
    //        task 1  task 2  task 3
    // after 1   90
    // after 2   80      70
    // after 3   60      65      50
    // AP = (60 + 65 + 50) / 3 = 58.33…
    // FG: task 1: max(90 − 60, 80 − 60) = 30; task 2: max(70 − 65) = 5 → (30 + 5) / 2 = 17.5
    let m = tri(&[&[90.0], &[80.0, 70.0], &[60.0, 65.0, 50.0]]);
    assert!(close(average_performance(&m).unwrap(), 175.0 / 3.0));
    assert!(close(forgetting(&m).unwrap(), 17.5));

    // The maximum is not always on the diagonal: task 1 peaks after task 2.
    // FG: task 1: max(50 − 40, 70 − 40) = 30; task 2: 80 − 60 = 20 → 25. AP = 190 / 3.
    let m = tri(&[&[50.0], &[70.0, 80.0], &[40.0, 60.0, 90.0]]);
    assert!(close(average_performance(&m).unwrap(), 190.0 / 3.0));
    assert!(close(forgetting(&m).unwrap(), 25.0));

    // A task that only improved gives a negative term (eq. 11 does not clamp).
    let m = tri(&[&[50.0], &[60.0, 70.0]]);
    assert!(close(forgetting(&m).unwrap(), -10.0));
    assert!(close(average_performance(&m).unwrap(), 65.0));

    // T = 1: FG is 0 by definition, AP the single entry.
    let m = tri(&[&[42.0]]);
    assert!(close(forgetting(&m).unwrap(), 0.0));
    assert!(close(average_performance(&m).unwrap(), 42.0));
}

#[test]
fn ap_and_fg_match_the_one_based_formula() {
    // A 5 × 5 matrix, evaluated with the 1-based formulas of docs/data.md#metrics written out
    // independently: a(j, t) = performance on task j after task t, 1 ≤ j ≤ t ≤ T.
    let vals = [
        [91.0, 0.0, 0.0, 0.0, 0.0],
        [85.5, 77.0, 0.0, 0.0, 0.0],
        [70.25, 79.0, 88.0, 0.0, 0.0],
        [72.0, 60.0, 81.0, 66.0, 0.0],
        [55.0, 58.5, 70.0, 69.0, 93.0],
    ];
    let t_max = 5;
    let a = |j: usize, t: usize| vals[t - 1][j - 1];
    let ap: f64 = (1..=t_max).map(|j| a(j, t_max)).sum::<f64>() / t_max as f64;
    let mut fg = 0.0;
    for j in 1..t_max {
        let mut best = f64::NEG_INFINITY;
        for z in j..t_max {
            best = best.max(a(j, z) - a(j, t_max));
        }
        fg += best;
    }
    fg /= (t_max - 1) as f64;
    // (55 + 58.5 + 70 + 69 + 93) / 5 = 69.1; FG = (36 + 20.5 + 18 + (−3)) / 4 = 17.875
    assert!(close(ap, 69.1));
    assert!(close(fg, 17.875));

    let m: Vec<Vec<Option<f64>>> = (0..t_max)
        .map(|t| (0..t_max).map(|j| (j <= t).then_some(vals[t][j])).collect())
        .collect();
    assert!(close(average_performance(&m).unwrap(), ap));
    assert!(close(forgetting(&m).unwrap(), fg));
}

#[test]
fn ap_and_fg_need_the_lower_triangle() {
    let mut m = tri(&[&[90.0], &[80.0, 70.0], &[60.0, 65.0, 50.0]]);
    m[1][0] = None;
    assert!(
        average_performance(&m).is_ok(),
        "AP reads only the last row"
    );
    assert!(forgetting(&m).is_err());
    m[2][1] = None;
    assert!(average_performance(&m).is_err());
    assert!(average_performance(&[]).is_err());
    assert!(forgetting(&[]).is_err());
}
