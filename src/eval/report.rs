//! The human-readable forms of an [`EvalReport`]: `report.md` and the terminal summary.

use super::{EvalReport, Summary};
use crate::labels::LabelKind;
use std::fmt::Write;
use std::path::Path;

fn pct(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{:.2}%", 100.0 * v),
        _ => "–".into(),
    }
}

fn num(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "–".into(),
    }
}

fn file_name(path: &str) -> String {
    Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn row(out: &mut String, dataset: &str, target: &str, s: &Summary, bold: bool) {
    let b = if bold { "**" } else { "" };
    let gt = s.ground_truth.as_ref();
    let _ = writeln!(
        out,
        "| {dataset} | {b}{target}{b} | {} | {b}{}{b} | {} | {} | {} | {} | {} | {} | {} |",
        s.pairs,
        pct(Some(s.accuracy)),
        pct(Some(s.error)),
        pct(s.all_correct),
        num(Some(s.reconstruction_l1), 4),
        num(gt.map(|g| g.l1), 4),
        num(gt.map(|g| g.l1_levels), 1),
        num(gt.map(|g| g.psnr_db), 2),
        num(gt.map(|g| g.identity_psnr_db), 2),
    );
}

/// `report.md`: tables of every metric and the sample grids.
pub fn markdown(r: &EvalReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# StarGAN evaluation\n");
    let it = r.iteration.map(|i| format!(" (iteration {i})")).unwrap_or_default();
    let _ = writeln!(o, "- Checkpoint: `{}`{it}", r.checkpoint);
    let split = r.data.synthetic_split.map(|s| format!(" ({s:?} labels)")).unwrap_or_default();
    let _ = writeln!(
        o,
        "- Data: {:?}{split}, {s}×{s} px, seed {}; up to {} test images per data set",
        r.data.dataset,
        r.data.seed,
        r.max_images,
        s = r.data.image_size
    );
    let _ = writeln!(
        o,
        "- Device: {}; time: judge {:.1} s, translation {:.1} s, total {:.1} s\n",
        r.device, r.seconds.classifier, r.seconds.translate, r.seconds.total
    );

    let c = &r.classifier;
    let _ = writeln!(o, "## Judge classifier\n");
    if c.loaded {
        let _ = writeln!(o, "Loaded from `{}` (trained earlier on real training images only).", c.path);
    } else {
        let _ = writeln!(
            o,
            "Trained now on real training images only: {} iterations in {}, final loss {}; cached as `{}`.",
            c.iterations,
            num(c.train_seconds, 1) + " s",
            num(c.final_loss, 4),
            c.path
        );
    }
    let _ = writeln!(
        o,
        "{} convolutions, {}-d penultimate features. Its accuracy on held-out **real** images (the \
         paper reports 0.45% error on real RaFD images):\n",
        c.layers, c.feature_dim
    );
    let _ = writeln!(o, "| Data set | Label | Images | Accuracy |\n|---|---|---:|---:|");
    for h in &c.held_out {
        let mean = if h.kind == LabelKind::MultiLabel { "all (mean over attributes)" } else { "all" };
        let _ = writeln!(o, "| {} | **{mean}** | {} | **{}** |", h.dataset, h.images, pct(Some(h.accuracy)));
        if let Some(a) = h.all_correct {
            let _ =
                writeln!(o, "| {} | every attribute right | {} | {} |", h.dataset, h.images, pct(Some(a)));
        }
        for l in &h.labels {
            let _ = writeln!(o, "| {} | {} | {} | {} |", h.dataset, l.label, l.images, pct(l.accuracy));
        }
    }
    for h in &c.held_out {
        let _ = writeln!(o, "\n{}: held-out images are {}.", h.dataset, h.held_out_from);
    }

    let _ = writeln!(o, "\n## Translations\n");
    let _ = writeln!(
        o,
        "Every test image translated to every target (the reference's test targets: a hair colour \
         set exclusively, any other attribute flipped; every class of a one-hot data set). \
         *Accuracy*: the judge sees the attribute or class the target was made for (the paper's \
         RaFD protocol; it reports 2.12% error for StarGAN). *All attributes*: every attribute as \
         the target vector says (multi-label targets). *Reconstruction*: mean |x − G(G(x, c_trg), \
         c_org)| in [-1, 1] units. *GT*: error against the true translation (built-in data only; \
         L1 in [-1, 1] units and 0–255 levels, PSNR on [0, 1]); *identity PSNR* is the untranslated \
         input's PSNR against the same truth, the baseline to beat (targets equal to the input's own \
         label are included, where the input is the truth and scores the 100 dB cap).\n"
    );
    let _ = writeln!(
        o,
        "| Input data set | Target | Pairs | Accuracy | Error | All attributes | Reconstruction L1 | GT L1 | \
         GT L1 (0–255) | GT PSNR (dB) | Identity PSNR (dB) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for d in &r.datasets {
        for t in &d.targets {
            row(&mut o, &d.dataset, &t.target, &t.summary, false);
        }
        if let Some(own) = &d.own_labels {
            row(&mut o, &d.dataset, &format!("its own ({}) labels", d.dataset), own, true);
        }
        row(&mut o, &d.dataset, "all targets", &d.summary, true);
    }
    if r.datasets.len() > 1 {
        row(&mut o, "all", "all targets", &r.overall, true);
    }

    let _ = writeln!(o, "\n## Classifier Fréchet distance (CFD)\n");
    let _ = writeln!(
        o,
        "The Fréchet distance between Gaussians fitted to the judge's penultimate features of the real \
         test images and of their translations (lower is better). It is **not** Inception FID and is \
         only comparable between evaluations with the same judge (same data, seed and judge \
         iterations). The floor is the CFD between as many real training images and the real test \
         images.\n"
    );
    let _ =
        writeln!(o, "| Data set | Real | Translated | CFD | Real-vs-real floor |\n|---|---:|---:|---:|---:|");
    for d in &r.datasets {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} |",
            d.dataset,
            d.images,
            d.summary.pairs,
            num(d.summary.cfd, 3),
            num(d.cfd_real_floor, 3)
        );
    }
    if r.datasets.len() > 1 {
        let images: usize = r.datasets.iter().map(|d| d.images).sum();
        let _ = writeln!(o, "| all | {images} | {} | {} | |", r.overall.pairs, num(r.overall.cfd, 3));
    }

    let _ = writeln!(o, "\n## Samples\n");
    let columns: Vec<String> =
        r.datasets.first().map(|d| d.targets.iter().map(|t| t.target.clone()).collect()).unwrap_or_default();
    let _ = writeln!(
        o,
        "Rows: the first test images{}; columns: the input, then {}.\n",
        if r.datasets.len() > 1 { " of each data set" } else { "" },
        columns.join(", ")
    );
    let _ = writeln!(o, "![translations]({})\n", file_name(&r.files.grid));
    if let Some(t) = &r.files.grid_truth {
        let _ = writeln!(
            o,
            "The true translations of the same images (grey where a target is not a complete label):\n"
        );
        let _ = writeln!(o, "![ground truth]({})", file_name(t));
    }
    o
}

/// The short summary `stargan eval` prints.
pub fn terminal(r: &EvalReport) -> String {
    let mut o = String::new();
    let c = &r.classifier;
    let how =
        if c.loaded { "loaded".to_string() } else { format!("trained in {} s", num(c.train_seconds, 1)) };
    let held: Vec<String> =
        c.held_out.iter().map(|h| format!("{} {}", h.dataset, pct(Some(h.accuracy)))).collect();
    let _ = writeln!(o, "judge classifier ({how}): held-out real accuracy {}", held.join(", "));
    for d in &r.datasets {
        let s = &d.summary;
        let mut line = format!(
            "{}: {} images, {} translations: target accuracy {}",
            d.dataset,
            d.images,
            s.pairs,
            pct(Some(s.accuracy))
        );
        if let Some(a) = s.all_correct {
            line += &format!(" (all attributes {})", pct(Some(a)));
        }
        if let Some(own) = &d.own_labels {
            line += &format!(" ({} on its own labels)", pct(Some(own.accuracy)));
        }
        line += &format!(", reconstruction L1 {}", num(Some(s.reconstruction_l1), 4));
        if let Some(g) = &s.ground_truth {
            line += &format!(
                ", ground truth L1 {} ({} levels) PSNR {} dB (identity {} dB)",
                num(Some(g.l1), 4),
                num(Some(g.l1_levels), 1),
                num(Some(g.psnr_db), 2),
                num(Some(g.identity_psnr_db), 2)
            );
        }
        line += &format!(", CFD {} (real-vs-real {})", num(s.cfd, 3), num(d.cfd_real_floor, 3));
        let _ = writeln!(o, "{line}");
    }
    let _ = writeln!(o, "wrote {} and {}", r.files.json, r.files.report);
    o
}
