//! One machine record (seed 002's sensor event): from an AI4I CSV row or a JSON object,
//! to the frame that carries it through the dataflow and back.
//!
//! The frame's values are `[type code, air, process, speed, torque, wear]` (the type as
//! its character's code, [`super::table::type_code`], which the dataflow joins with the
//! type table); the machine id is the frame's `machine_id`, the record's own id (AI4I's
//! `UDI`, JSON `id`) its `id`.

use serde_json::Value;

use super::features::Sensors;
use super::table::{type_code, TypeCode};
use crate::types::{Frame, FrameMeta};

/// A decoded machine record.
#[derive(Clone, Debug, PartialEq)]
pub struct MachineRecord {
    /// The record's own id (AI4I's `UDI`), if it has one.
    pub id: Option<String>,
    /// Which machine: the record's key.
    pub machine_id: String,
    /// The machine's type code (see [`type_code`]).
    pub machine_type: TypeCode,
    /// The five sensor values.
    pub sensors: Sensors,
}

/// The JSON keys of the five sensor values: seed 002's names, then AI4I's column names.
const SENSOR_KEYS: [[&str; 2]; 5] = [
    ["airTemperature", "Air temperature [K]"],
    ["processTemperature", "Process temperature [K]"],
    ["rotationalSpeed", "Rotational speed [rpm]"],
    ["torque", "Torque [Nm]"],
    ["toolWear", "Tool wear [min]"],
];

impl MachineRecord {
    /// From a JSON object `{"machine_id", "type", the five sensor values}`: the values
    /// top-level or under `sensor_data` (seed 002's `/predict` body), by seed 002's names
    /// (`airTemperature`, …) or AI4I's column names; `machine_id` a string or a number.
    pub fn from_json(v: &Value) -> Result<MachineRecord, String> {
        let obj = v.as_object().ok_or("not a JSON object")?;
        let machine_id = match obj.get("machine_id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err("machine_id: expected a non-empty string or a number".into()),
        };
        let machine_type = match obj.get("type").or_else(|| obj.get("Type")) {
            Some(Value::String(s)) => type_code(s).ok_or(format!("type {s:?}: one letter"))?,
            _ => return Err("type: expected a string such as \"L\", \"M\" or \"H\"".into()),
        };
        let values = obj.get("sensor_data").unwrap_or(v);
        let mut x = [0f32; 5];
        for (slot, names) in x.iter_mut().zip(SENSOR_KEYS) {
            let found = names.iter().find_map(|k| values.get(*k));
            *slot = match found.and_then(Value::as_f64) {
                Some(f) if f.is_finite() => f as f32,
                _ => return Err(format!("{}: expected a finite number", names[0])),
            };
        }
        let id = match obj.get("id") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        Ok(MachineRecord {
            id,
            machine_id,
            machine_type,
            sensors: sensors(x),
        })
    }

    /// The frame that carries the record.
    pub fn into_frame(self, meta: FrameMeta) -> Frame {
        let s = self.sensors;
        Frame {
            seq: 0,
            meta: FrameMeta {
                id: self.id,
                machine_id: Some(self.machine_id),
                ..meta
            },
            values: vec![
                self.machine_type as f32,
                s.air,
                s.process,
                s.speed,
                s.torque,
                s.wear,
            ],
        }
    }

    /// The type code and sensor values of a frame made by [`MachineRecord::into_frame`];
    /// `None` for a frame of another shape.
    pub fn of_frame(frame: &Frame) -> Option<(TypeCode, Sensors)> {
        match frame.values[..] {
            [t, air, process, speed, torque, wear] if t >= 0.0 && t.fract() == 0.0 => {
                Some((t as TypeCode, sensors([air, process, speed, torque, wear])))
            }
            _ => None,
        }
    }
}

fn sensors([air, process, speed, torque, wear]: [f32; 5]) -> Sensors {
    Sensors {
        air,
        process,
        speed,
        torque,
        wear,
    }
}

/// The columns of an AI4I CSV file a record needs, found by name in its header.
#[derive(Clone, Debug)]
pub struct Ai4iColumns {
    udi: Option<usize>,
    machine_id: usize,
    machine_type: usize,
    sensors: [usize; 5],
    width: usize,
}

impl Ai4iColumns {
    /// Finds the columns in `header`: `Product ID` (the machine id), `Type`, the five
    /// sensor columns, and `UDI` if present.
    pub fn new(header: &[&str]) -> Result<Ai4iColumns, String> {
        let find = |name: &str| {
            header
                .iter()
                .position(|h| h.trim() == name)
                .ok_or(format!("no column {name:?}"))
        };
        let mut sensors = [0; 5];
        for (slot, names) in sensors.iter_mut().zip(SENSOR_KEYS) {
            *slot = find(names[1])?;
        }
        Ok(Ai4iColumns {
            udi: find("UDI").ok(),
            machine_id: find("Product ID")?,
            machine_type: find("Type")?,
            sensors,
            width: header.len(),
        })
    }

    /// The record in one row's fields.
    pub fn record(&self, fields: &[&str]) -> Result<MachineRecord, String> {
        if fields.len() != self.width {
            return Err(format!(
                "{} fields, the header has {}",
                fields.len(),
                self.width
            ));
        }
        let t = fields[self.machine_type].trim();
        let mut x = [0f32; 5];
        for (slot, &c) in x.iter_mut().zip(&self.sensors) {
            let text = fields[c].trim();
            *slot = text
                .parse::<f32>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or(format!("column {}: {text:?} is not a number", c + 1))?;
        }
        Ok(MachineRecord {
            id: self.udi.map(|c| fields[c].trim().to_string()),
            machine_id: fields[self.machine_id].trim().to_string(),
            machine_type: type_code(t).ok_or(format!("Type {t:?}: one letter"))?,
            sensors: sensors(x),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_json_give_the_same_record() {
        let header = "UDI,Product ID,Type,Air temperature [K],Process temperature [K],Rotational speed [rpm],Torque [Nm],Tool wear [min],Machine failure";
        let cols = Ai4iColumns::new(&header.split(',').collect::<Vec<_>>()).unwrap();
        let row = "1,M14860,M,298.1,308.6,1551,42.8,0,0";
        let from_csv = cols.record(&row.split(',').collect::<Vec<_>>()).unwrap();
        let json = serde_json::json!({"id": 1, "machine_id": "M14860", "type": "M",
            "sensor_data": {"airTemperature": 298.1, "processTemperature": 308.6,
            "rotationalSpeed": 1551, "torque": 42.8, "toolWear": 0}});
        assert_eq!(MachineRecord::from_json(&json).unwrap(), from_csv);
        let frame = from_csv.clone().into_frame(FrameMeta::default());
        assert_eq!(frame.meta.machine_id.as_deref(), Some("M14860"));
        assert_eq!(frame.meta.id.as_deref(), Some("1"));
        assert_eq!(
            MachineRecord::of_frame(&frame),
            Some(('M' as u32, from_csv.sensors))
        );
    }

    #[test]
    fn bad_records_say_why() {
        let err = |v: Value| MachineRecord::from_json(&v).unwrap_err();
        assert!(err(serde_json::json!({"type": "L"})).contains("machine_id"));
        assert!(err(serde_json::json!({"machine_id": 1, "type": "LL"})).contains("type"));
        let no_torque = serde_json::json!({"machine_id": 1, "type": "L", "airTemperature": 1,
            "processTemperature": 2, "rotationalSpeed": 3, "toolWear": 4});
        assert!(err(no_torque).contains("torque"));
        assert!(Ai4iColumns::new(&["UDI", "Type"]).is_err());
    }
}
