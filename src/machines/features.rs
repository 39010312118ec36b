//! Seed 002's model inputs of one record, mirroring `scripts/machines_features.py` line by
//! line (tests/machines.rs checks the two agree on the shared data).

/// The model's input columns, in order: the encoded type, the five sensor values, and the
/// five derived features.
pub const NAMES: [&str; 11] = [
    "Type_encoded",
    "Air_temperature_K",
    "Process_temperature_K",
    "Rotational_speed_rpm",
    "Torque_Nm",
    "Tool_wear_min",
    "Temp_diff",
    "Power",
    "Tool_wear_rate",
    "Torque_speed_ratio",
    "Temp_toolwear",
];

/// The five sensor values of a machine record, as a frame holds them (`f32`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sensors {
    /// Air temperature, K.
    pub air: f32,
    /// Process temperature, K.
    pub process: f32,
    /// Rotational speed, rpm.
    pub speed: f32,
    /// Torque, Nm.
    pub torque: f32,
    /// Tool wear, minutes.
    pub wear: f32,
}

/// The eleven model inputs: the sensor values widened from `f32` (training rounds them to
/// float32 first too), the derived features computed in `f64` as training does; the model
/// compares all eleven as `f32`.
pub fn features(type_encoded: f64, s: &Sensors) -> [f64; 11] {
    let (air, process, speed, torque, wear) = (
        f64::from(s.air),
        f64::from(s.process),
        f64::from(s.speed),
        f64::from(s.torque),
        f64::from(s.wear),
    );
    [
        type_encoded,
        air,
        process,
        speed,
        torque,
        wear,
        process - air,
        torque * speed / 1000.0,
        wear / speed,
        torque / speed,
        process * wear,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seed 002's worked example: 42.5 Nm at 1500 rpm is 63.75 kW of power.
    #[test]
    fn seed_example() {
        let s = Sensors {
            air: 300.5,
            process: 310.2,
            speed: 1500.0,
            torque: 42.5,
            wear: 100.0,
        };
        let f = features(1.0, &s);
        assert_eq!(f[7], 63.75);
        assert!((f[6] - 9.7).abs() < 1e-4, "{}", f[6]);
        assert!((f[8] - 0.0667).abs() < 1e-4 && (f[9] - 0.0283).abs() < 1e-4);
        assert!((f[10] - 31020.0).abs() < 1e-2, "{}", f[10]);
    }
}
