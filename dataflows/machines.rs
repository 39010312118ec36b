//! Seed 002's pipeline: machine records (AI4I CSV or JSON, keyed by machine id) are
//! enriched with their type's encoding by a differential join with the type table
//! (`types.csv` of the model directory, reloaded while the run goes on when the file
//! changes), get the five derived features of training, and an XGBoost model's failure
//! probability; a record at or over the threshold (the model's, or `--threshold`) is an
//! alert carrying its `machine_id` and `probability`. Run with `--model models/machines`
//! and a file of records (see README, Machines).

use std::sync::Arc;

use timely::dataflow::Scope;

use crate::machines::stage::MachineOps;
use crate::machines::{model_dir, MachinesModel};
use crate::ops::Time;
use crate::runtime::{Env, Results};

/// Registry name.
pub const NAME: &str = "machines";

/// records → join with the type table → features → trees → verdicts (on worker 0).
pub fn build<'s>(scope: Scope<'s, Time>, env: &mut Env) -> anyhow::Result<Results<'s>> {
    let model = MachinesModel::load(&model_dir(&env.model)?)?;
    let table = Arc::new(model.table()?);
    let threshold = env.threshold();
    Ok(env
        .frames(scope)
        .machine_verdicts(Arc::new(model), table, threshold))
}
