//! The assignment's identities (questions 3.1–3.4) through the library functions, and the
//! dropout layer. Numbers are printed for the report; assertions state their tolerances.

use nabla::analysis::{dropout_identity, min_norm, norm_exercise, padding};
use nabla::gradcheck::{check_gradients, randn, GradCheckOptions};
use nabla::nn::{dropout, Ctx, Dropout, KeepProb, Module};
use nabla::{ParamStore, Rng, Tape, Tensor};

#[test]
fn question_3_1_norm_statistics_exact() {
    let s = norm_exercise::assignment_norm_stats().unwrap();
    let close = |got: &[f64], want: &[f64], what: &str| {
        assert_eq!(got.len(), want.len(), "{what}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{what}: got {got:?} want {want:?}");
        }
    };
    close(&s.batch_mean, &[2.5, 2.5], "batch mean");
    close(&s.batch_var, &[13.0 / 12.0, 17.0 / 12.0], "batch var");
    close(
        &s.layer_mean,
        &[17.0 / 6.0, 8.0 / 3.0, 2.5, 2.0],
        "layer mean",
    );
    close(
        &s.layer_var,
        &[41.0 / 36.0, 11.0 / 9.0, 11.0 / 12.0, 4.0 / 3.0],
        "layer var",
    );
    close(
        &s.instance_mean,
        &[
            3.0,
            8.0 / 3.0,
            8.0 / 3.0,
            8.0 / 3.0,
            8.0 / 3.0,
            7.0 / 3.0,
            5.0 / 3.0,
            7.0 / 3.0,
        ],
        "instance mean",
    );
    close(
        &s.instance_var,
        &[
            2.0 / 3.0,
            14.0 / 9.0,
            14.0 / 9.0,
            8.0 / 9.0,
            2.0 / 9.0,
            14.0 / 9.0,
            8.0 / 9.0,
            14.0 / 9.0,
        ],
        "instance var",
    );
    assert!(s.max_output_check_error < 1e-12);
}

#[test]
fn question_3_2_padding_changes_plain_batch_norm_only() {
    let r = padding::padding_demo(&[7, 3, 5, 2], 8, 5, 42).unwrap();
    eprintln!("{}", serde_json::to_string(&r).unwrap());
    let e = |name: &str| r.effects.iter().find(|e| e.layer == name).unwrap().clone();
    let (bn, mbn, ln) = (e("batch_norm"), e("masked_batch_norm"), e("layer_norm"));
    assert!(
        bn.more_padding > 0.05 && bn.other_sentences > 0.05,
        "{bn:?}"
    );
    assert!(mbn.more_padding < 1e-12, "{mbn:?}");
    assert!(mbn.other_sentences > 0.05, "{mbn:?}");
    assert!(
        ln.more_padding < 1e-12 && ln.other_sentences < 1e-12,
        "{ln:?}"
    );
    assert!(padding::padding_demo(&[3], 8, 5, 0).is_err());
}

#[test]
fn question_3_3_dropout_identity_exact_and_monte_carlo() {
    let keep = KeepProb::new(0.7).unwrap();
    let r = dropout_identity::dropout_identity_demo(3, 4, keep, 200_000, 1).unwrap();
    eprintln!("{}", serde_json::to_string(&r).unwrap());
    let exact = r.exact_enumeration.unwrap();
    assert!((exact - r.closed_form).abs() <= 1e-10 * r.closed_form.abs());
    assert!(r.closed_form_in_ci, "{r:?}");
    assert!(r.z_score.abs() < 4.0);
    let big = dropout_identity::dropout_identity_demo(20, 10, keep, 20_000, 2).unwrap();
    assert!(big.exact_enumeration.is_none());
    assert!(big.z_score.abs() < 4.0, "{big:?}");
}

#[test]
fn question_3_4_gd_converges_to_minimum_norm_solution() {
    let (zero, nonzero) = min_norm::min_norm_demo(5, 20, 3).unwrap();
    eprintln!("w0 = 0: {}", serde_json::to_string(&zero).unwrap());
    eprintln!("w0 != 0: {}", serde_json::to_string(&nonzero).unwrap());
    assert!(zero.converged && nonzero.converged);
    assert!(zero.pinv_crosscheck < 1e-10);
    assert!(zero.step < zero.step_bound);
    assert!(zero.dist_to_pinv_solution < 1e-9, "{zero:?}");
    assert!(nonzero.dist_to_predicted_limit < 1e-9, "{nonzero:?}");
    // From w0 != 0 the limit is not the minimum-norm solution.
    assert!(nonzero.dist_to_pinv_solution > 0.1, "{nonzero:?}");
    assert!(nonzero.norm_w > nonzero.norm_pinv_solution);
    let x = Tensor::<f64>::zeros(&[5, 3]);
    let e = min_norm::min_norm_gd(
        &x,
        &Tensor::zeros(&[5]),
        &Tensor::zeros(&[3]),
        0.5,
        1e-9,
        10,
    )
    .unwrap_err();
    assert!(e.to_string().contains("d > n"), "{e}");
}

#[test]
fn dropout_keep_probability_modes_and_gradient() {
    assert!(KeepProb::new(0.0).is_err());
    assert!(KeepProb::new(1.5).is_err());
    assert!(KeepProb::new(f64::NAN).is_err());
    assert!(KeepProb::from_torch_drop_prob(1.0).is_err());
    let k = KeepProb::from_torch_drop_prob(0.1).unwrap();
    assert!((k.keep() - 0.9).abs() < 1e-15 && (k.drop_prob() - 0.1).abs() < 1e-15);

    let keep = KeepProb::new(0.8).unwrap();
    let x = Tensor::<f64>::full(&[100_000], 2.0);
    let mut rng = Rng::new(9);
    let mut tape = Tape::<f64>::new();
    let xv = tape.input(x.clone());
    let inv = Dropout::new(keep);
    let store = ParamStore::new();
    let y = inv
        .forward(&mut tape, &store, xv, &mut Ctx::train(&mut rng))
        .unwrap();
    let yd = tape.value(y).data();
    let kept = yd.iter().filter(|v| **v != 0.0).count() as f64 / 1e5;
    assert!((kept - 0.8).abs() < 0.01, "kept fraction {kept}");
    assert!(yd.iter().all(|&v| v == 0.0 || (v - 2.5).abs() < 1e-12));
    let non = Dropout::non_inverted(keep);
    let y2 = non
        .forward(&mut tape, &store, xv, &mut Ctx::train(&mut rng))
        .unwrap();
    assert!(tape.value(y2).data().iter().all(|&v| v == 0.0 || v == 2.0));
    // Evaluation: identity (inverted) or scale by p (non-inverted).
    assert_eq!(
        inv.forward(&mut tape, &store, xv, &mut Ctx::eval())
            .unwrap(),
        xv
    );
    let y3 = non
        .forward(&mut tape, &store, xv, &mut Ctx::eval())
        .unwrap();
    assert!(tape
        .value(y3)
        .data()
        .iter()
        .all(|&v| (v - 1.6).abs() < 1e-12));

    // Gradient: the same mask (same seed) in every evaluation.
    let mut r = Rng::new(1);
    let xs = randn(&[4, 6], 1.0, &mut r);
    for inverted in [true, false] {
        let rep = check_gradients(
            &ParamStore::new(),
            std::slice::from_ref(&xs),
            &GradCheckOptions::default(),
            |tape, _, v| dropout(tape, v[0], keep, inverted, true, &mut Rng::new(5)),
        )
        .unwrap();
        assert!(rep.max_rel_error < 1e-6, "{:?}", rep.per_tensor);
    }
}
