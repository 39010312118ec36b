//! Inference of a binary XGBoost classifier from the JSON model XGBoost writes
//! (`Booster.save_model("….json")`).
//!
//! Written by hand: no well-kept crate reads XGBoost's JSON model format (`gbdt` reads a
//! format of its own converted from old XGBoost dumps and has had no release since 2020),
//! and the walk is short. It follows XGBoost's CPU predictor: inputs as `f32`, a node
//! goes left when the value is `<` its split condition (or is missing and the node's
//! default is left), the margin is the base margin plus each tree's leaf, summed in `f32`
//! tree by tree, and the probability its logistic sigmoid.

use anyhow::{bail, ensure, Context};
use serde_json::Value;

/// One regression tree, XGBoost's arrays as they are in the JSON.
#[derive(Clone, Debug)]
struct Tree {
    left: Vec<i32>,
    right: Vec<i32>,
    feature: Vec<u32>,
    /// Split threshold of an inner node, the leaf value of a leaf.
    condition: Vec<f32>,
    default_left: Vec<bool>,
}

impl Tree {
    fn leaf(&self, x: &[f32]) -> f32 {
        let mut node = 0usize;
        while self.left[node] >= 0 {
            let v = x[self.feature[node] as usize];
            let go_left = if v.is_nan() {
                self.default_left[node]
            } else {
                v < self.condition[node]
            };
            node = if go_left {
                self.left[node]
            } else {
                self.right[node]
            } as usize;
        }
        self.condition[node]
    }
}

/// A `binary:logistic` gradient-boosted tree model.
#[derive(Clone, Debug)]
pub struct Booster {
    base_margin: f32,
    trees: Vec<Tree>,
    n_features: usize,
}

impl Booster {
    /// Reads XGBoost's JSON model; refuses objectives other than `binary:logistic`,
    /// multi-class models and categorical splits, which this walk does not implement.
    pub fn from_json(text: &str) -> anyhow::Result<Booster> {
        let v: Value = serde_json::from_str(text).context("not JSON")?;
        let learner = &v["learner"];
        let objective = learner["objective"]["name"].as_str().unwrap_or("");
        ensure!(
            objective == "binary:logistic",
            "objective {objective:?}: only binary:logistic is supported"
        );
        let param = &learner["learner_model_param"];
        let n_features: usize = str_param(param, "num_feature")?.parse()?;
        // XGBoost 2 writes "5E-1", XGBoost 3 "[5E-1]": a probability for this objective
        let base: f32 = str_param(param, "base_score")?
            .trim_matches(|c| c == '[' || c == ']')
            .parse()
            .context("base_score")?;
        ensure!(
            base > 0.0 && base < 1.0,
            "base_score {base} is not a probability"
        );
        let model = &learner["gradient_booster"]["model"];
        let trees = model["trees"]
            .as_array()
            .context("no gradient_booster.model.trees")?
            .iter()
            .enumerate()
            .map(|(i, t)| tree(t, n_features).with_context(|| format!("tree {i}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if let Some(info) = model["tree_info"].as_array() {
            ensure!(
                info.iter().all(|g| g.as_u64() == Some(0)),
                "multi-class models are not supported"
            );
        }
        Ok(Booster {
            base_margin: -(1.0 / base - 1.0).ln(),
            trees,
            n_features,
        })
    }

    /// Number of input features.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// The probability of the positive class for one row of `n_features` inputs (NaN:
    /// missing).
    ///
    /// # Panics
    /// When `x` is shorter than the model's inputs.
    pub fn probability(&self, x: &[f32]) -> f32 {
        assert!(x.len() >= self.n_features, "{} inputs", x.len());
        let mut margin = self.base_margin;
        for t in &self.trees {
            margin += t.leaf(x);
        }
        1.0 / (1.0 + (-margin).exp())
    }
}

fn str_param<'a>(param: &'a Value, key: &str) -> anyhow::Result<&'a str> {
    param[key]
        .as_str()
        .with_context(|| format!("learner_model_param.{key} missing"))
}

fn tree(t: &Value, n_features: usize) -> anyhow::Result<Tree> {
    let ints = |key: &str| -> anyhow::Result<Vec<i64>> {
        t[key]
            .as_array()
            .with_context(|| format!("no {key}"))?
            .iter()
            .map(|x| x.as_i64().with_context(|| format!("{key}: not an integer")))
            .collect()
    };
    let left = ints("left_children")?;
    let right = ints("right_children")?;
    let feature = ints("split_indices")?;
    // 0/1 in XGBoost 2 and 3; older writers used booleans
    let default_left = t["default_left"]
        .as_array()
        .context("no default_left")?
        .iter()
        .map(|x| x.as_bool().unwrap_or(x.as_i64() == Some(1)))
        .collect::<Vec<bool>>();
    let condition = t["split_conditions"]
        .as_array()
        .context("no split_conditions")?
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32).context("split_conditions"))
        .collect::<anyhow::Result<Vec<f32>>>()?;
    if let Some(types) = t["split_type"].as_array() {
        ensure!(
            types.iter().all(|s| s.as_i64() == Some(0)),
            "categorical splits are not supported"
        );
    }
    let n = left.len();
    ensure!(n > 0, "no nodes");
    for (key, len) in [
        ("right_children", right.len()),
        ("split_indices", feature.len()),
        ("split_conditions", condition.len()),
        ("default_left", default_left.len()),
    ] {
        ensure!(len == n, "{key} has {len} entries for {n} nodes");
    }
    for i in 0..n {
        if left[i] < 0 {
            continue;
        }
        // children come after their parent, so every walk ends
        let inside = |c: i64| c > i as i64 && (c as usize) < n;
        if !inside(left[i]) || !inside(right[i]) {
            bail!(
                "node {i}: children {} and {} out of order",
                left[i],
                right[i]
            );
        }
        ensure!(
            (feature[i] as usize) < n_features,
            "node {i}: feature {} of {n_features}",
            feature[i]
        );
    }
    Ok(Tree {
        left: left.iter().map(|&c| c as i32).collect(),
        right: right.iter().map(|&c| c as i32).collect(),
        feature: feature.iter().map(|&f| f as u32).collect(),
        condition,
        default_left,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One stump: x0 < 1 (or missing) → -2, else 3, around a base score of 0.5.
    const STUMP: &str = r#"{"learner":{"objective":{"name":"binary:logistic"},
        "learner_model_param":{"base_score":"[5E-1]","num_feature":"2","num_class":"0"},
        "gradient_booster":{"model":{"tree_info":[0],"trees":[{
            "left_children":[1,-1,-1],"right_children":[2,-1,-1],"split_indices":[0,0,0],
            "split_conditions":[1.0,-2.0,3.0],"default_left":[1,0,0],"split_type":[0,0,0]}]}}}}"#;

    #[test]
    fn walks_a_stump() {
        let b = Booster::from_json(STUMP).unwrap();
        let sigmoid = |m: f32| 1.0 / (1.0 + (-m).exp());
        assert_eq!(b.probability(&[0.5, 9.0]), sigmoid(-2.0));
        assert_eq!(b.probability(&[1.0, 9.0]), sigmoid(3.0));
        assert_eq!(b.probability(&[f32::NAN, 9.0]), sigmoid(-2.0));
    }

    #[test]
    fn refuses_what_it_cannot_walk() {
        let other = STUMP.replace("binary:logistic", "reg:squarederror");
        assert!(Booster::from_json(&other).is_err());
        let cycle = STUMP.replace("[1,-1,-1]", "[0,-1,-1]");
        let err = Booster::from_json(&cycle).unwrap_err();
        assert!(format!("{err:#}").contains("out of order"), "{err:#}");
        let wide = STUMP.replace("\"split_indices\":[0,0,0]", "\"split_indices\":[5,0,0]");
        assert!(format!("{:#}", Booster::from_json(&wide).unwrap_err()).contains("feature 5"));
    }
}
