//! Domain labels and the mask vector.
//!
//! A run trains on one or more labelled datasets ("domains"). Each labels its images either with
//! several independent binary attributes (CelebA: `Black_Hair Blond_Hair Brown_Hair Male Young`)
//! or with one class out of many (RaFD's expressions). G's label vector is the concatenation of
//! every dataset's part, followed, when there is more than one dataset, by a one-hot mask that
//! says which part is known: `[c_celeba | c_rafd | mask]`. D predicts every part at once and each
//! batch is judged only on its own slice. With a single dataset the layout degenerates to the plain
//! label, so one training step serves both cases.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabelKind {
    /// Independent 0/1 attributes; BCE-with-logits summed over attributes, divided by batch.
    MultiLabel,
    /// Exactly one class; cross-entropy.
    OneHot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// The dataset's name, as the reference logs it (`CelebA`, `RaFD`).
    pub name: String,
    pub kind: LabelKind,
    /// Attribute or class names, in label order.
    pub labels: Vec<String>,
}

impl Domain {
    pub fn dim(&self) -> i64 {
        self.labels.len() as i64
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelLayout {
    pub domains: Vec<Domain>,
}

/// The hair-colour attributes that the reference treats as one exclusive group in its targets.
pub const HAIR_COLOURS: [&str; 4] = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"];

impl LabelLayout {
    pub fn single(domain: Domain) -> Self {
        Self { domains: vec![domain] }
    }

    /// One line naming every dataset and its labels, for messages: `CelebA [Black_Hair, ...] + RaFD [...]`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> =
            self.domains.iter().map(|d| format!("{} [{}]", d.name, d.labels.join(", "))).collect();
        parts.join(" + ")
    }

    pub fn uses_mask(&self) -> bool {
        self.domains.len() > 1
    }

    /// Length of G's label input (mask included).
    pub fn g_dim(&self) -> i64 {
        self.d_dim() + if self.uses_mask() { self.domains.len() as i64 } else { 0 }
    }

    /// Number of D's class logits.
    pub fn d_dim(&self) -> i64 {
        self.domains.iter().map(Domain::dim).sum()
    }

    fn offset(&self, k: usize) -> i64 {
        self.domains[..k].iter().map(Domain::dim).sum()
    }

    /// A domain's own label as a dense vector: the 0/1 attributes as they are, a class index
    /// one-hot encoded (the reference's `label2onehot`).
    pub fn dense(&self, k: usize, label: &Tensor) -> Tensor {
        match self.domains[k].kind {
            LabelKind::MultiLabel => label.to_kind(Kind::Float),
            LabelKind::OneHot => {
                label.to_kind(Kind::Int64).one_hot(self.domains[k].dim()).to_kind(Kind::Float)
            }
        }
    }

    /// G's input label for a batch of domain `k`: its part filled in, the other parts zero, and
    /// the mask saying which part is known.
    pub fn condition(&self, k: usize, label: &Tensor) -> Tensor {
        self.place(k, &self.dense(k, label))
    }

    /// Embed an already dense part of domain `k` into the full layout.
    pub fn place(&self, k: usize, dense: &Tensor) -> Tensor {
        if !self.uses_mask() {
            return dense.shallow_clone();
        }
        let n = dense.size()[0];
        let opts = (Kind::Float, dense.device());
        let mut parts = Vec::new();
        for (j, d) in self.domains.iter().enumerate() {
            parts.push(if j == k { dense.shallow_clone() } else { Tensor::zeros([n, d.dim()], opts) });
        }
        parts.push(
            Tensor::full([n], k as i64, (Kind::Int64, dense.device()))
                .one_hot(self.domains.len() as i64)
                .to_kind(Kind::Float),
        );
        Tensor::cat(&parts, 1)
    }

    /// D's class logits that belong to domain `k`.
    pub fn slice_logits(&self, k: usize, logits: &Tensor) -> Tensor {
        if !self.uses_mask() {
            return logits.shallow_clone();
        }
        logits.narrow(1, self.offset(k), self.domains[k].dim())
    }

    /// The reference's `create_labels` for a batch of domain `k` with labels `label`: for its own
    /// multi-label part, one target per attribute (a hair colour set exclusively, any other attribute
    /// flipped); for a one-hot part, one target per class. In joint training every domain's targets
    /// follow, in domain order, as the reference's `test_multi` does (a multi-label domain that is
    /// not the batch's own starts from all-zero attributes, since they are unknown).
    pub fn test_targets(&self, k: usize, label: &Tensor) -> Vec<Tensor> {
        let n = label.size()[0];
        let device = label.device();
        let mut targets = Vec::new();
        for (j, d) in self.domains.iter().enumerate() {
            match d.kind {
                LabelKind::MultiLabel => {
                    let org = if j == k {
                        self.dense(k, label)
                    } else {
                        Tensor::zeros([n, d.dim()], (Kind::Float, device))
                    };
                    let hair: Vec<i64> = d
                        .labels
                        .iter()
                        .enumerate()
                        .filter(|(_, name)| HAIR_COLOURS.contains(&name.as_str()))
                        .map(|(i, _)| i as i64)
                        .collect();
                    for i in 0..d.dim() {
                        let trg = org.copy();
                        if hair.contains(&i) {
                            for &h in &hair {
                                let _ = trg.narrow(1, h, 1).fill_(if h == i { 1.0 } else { 0.0 });
                            }
                        } else {
                            let col = trg.narrow(1, i, 1);
                            let flipped = col.eq(0.0).to_kind(Kind::Float);
                            let mut col = col;
                            col.copy_(&flipped);
                        }
                        targets.push(self.place(j, &trg));
                    }
                }
                LabelKind::OneHot => {
                    for i in 0..d.dim() {
                        let cls = Tensor::full([n], i, (Kind::Int64, device));
                        targets.push(self.condition(j, &cls));
                    }
                }
            }
        }
        targets
    }

    /// Human-readable name of each target of [`LabelLayout::test_targets`], for file names.
    pub fn test_target_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for d in &self.domains {
            for l in &d.labels {
                names.push(match d.kind {
                    LabelKind::MultiLabel if HAIR_COLOURS.contains(&l.as_str()) => l.clone(),
                    LabelKind::MultiLabel => format!("flip-{l}"),
                    LabelKind::OneHot => l.clone(),
                });
            }
        }
        names
    }
}

/// The reference's CelebA domain with its default five attributes.
pub fn celeba_domain(attrs: &[String]) -> Domain {
    Domain { name: "CelebA".into(), kind: LabelKind::MultiLabel, labels: attrs.to_vec() }
}

/// A one-hot domain such as RaFD's expressions (class names in sorted folder order).
pub fn onehot_domain(name: &str, classes: &[String]) -> Domain {
    Domain { name: name.into(), kind: LabelKind::OneHot, labels: classes.to_vec() }
}

pub const DEFAULT_CELEBA_ATTRS: [&str; 5] = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"];
pub const RAFD_EXPRESSIONS: [&str; 8] =
    ["angry", "contemptuous", "disgusted", "fearful", "happy", "neutral", "sad", "surprised"];
