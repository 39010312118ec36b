"""Seed 002's features of one machine record, exactly as training computes them.

The one definition the training script uses; `src/machines/features.rs` mirrors it line by
line, and `tests/machines.rs` checks the two agree on every record of the shared data
(through the fixture `scripts/train-machines.py` writes).
"""

import numpy as np

# The model's input columns, in order: the encoded type, the five sensor values, and the
# five derived features.
FEATURES = [
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
]


def features(type_encoded, air, process, speed, torque, wear):
    """The eleven model inputs of one record. The sensor values are first rounded to float32,
    as every tidewatch frame holds them; the derived features are then computed in float64
    (the model casts all eleven to float32)."""
    air, process, speed, torque, wear = (
        float(np.float32(v)) for v in (air, process, speed, torque, wear)
    )
    return [
        float(type_encoded),
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
